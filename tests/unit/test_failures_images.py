"""A failed img2img's record keeps its input images' sizes and hashes, never their pixels (issue 27)."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from zitops.logbook.failures import FailureStore


def test_a_failure_record_keeps_image_sizes_and_hashes_not_pixels(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(buf, "PNG")
    raw = buf.getvalue()
    b64 = base64.b64encode(raw).decode()
    assert len(b64) > 500_000  # the probe's image was 4.2 MB; this one is big enough to tell
    store = FailureStore(tmp_path / "state", tmp_path / "logs")
    store.record(job_id="j1", profile="designer", prompt="p", params={"init_image": b64, "mask": "not base64!",
                                                                      "steps": 8},
                 exc_type="EngineError", message="boom", traceback=None, worker_id="w0", vram=None, action="fail")
    assert store.jsonl_path.stat().st_size < 4096
    (record,) = store.list()
    assert record.params["init_image"] == {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                                           "size": "512x384"}
    assert set(record.params["mask"]) == {"bytes", "sha256"} and record.params["steps"] == 8
