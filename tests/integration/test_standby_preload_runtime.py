"""A standby spare that has also loaded the tiny model: real spawned workers, real pixels."""

from __future__ import annotations

import io
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import pixels, tiny_model_dir
from tests.runtime_support import Runtime, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")



def _image(rt: Runtime, seed: int) -> Any:
    from PIL import Image

    rec = rt.wait(rt.submit(request(seed=seed)).id, 60)
    assert rec.status is JobStatus.SUCCEEDED, rec
    with Image.open(io.BytesIO(rt.lt.call(rt.d.image, rec.id, 0)[1])) as img:
        return pixels(img.convert("RGB"))


def _loaded_spare(rt: Runtime) -> dict[str, Any]:
    (spare,) = wait_until(lambda: [s for s in rt.status()["standby"]["spares"] if s["state"] == "idle"], 60,
                          what="a standby spare done importing and loading")
    return dict(spare)


def _restarted_from(rt: Runtime, old_pid: int, spare_pid: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        w = rt.status()["workers"][0]
        return w if w["state"] == "ready" and w["pid"] not in (None, old_pid) else None

    worker: dict[str, Any] = wait_until(ready, 30, what="the restarted worker")
    assert worker["pid"] == spare_pid
    return worker


def _fresh_engine_pixels(tmp: Path, seed: int) -> Any:
    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.profile import EngineSettings

    engine = DiffusersEngine(EngineSettings(precision="fp32", vae_precision="fp32"), str(tiny_model_dir()),
                             state_dir=tmp / "fresh")
    engine.setup("cpu")
    return pixels(engine.generate(request(seed=seed)).images[0].convert("RGB"))


def test_a_crash_restart_takes_the_spares_preloaded_pipeline_and_draws_the_same_pixels(tmp_path: Path) -> None:
    # A private copy of the tiny model, so its weights can be spoiled while the spare holds them.
    model = Path(shutil.copytree(tiny_model_dir(), tmp_path / "model"))
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    rt = Runtime(runtime_config(tmp_path, model=str(model)))
    try:
        (first,) = rt.status()["workers"]
        assert first["startup"]["source"] == "spawn" and first["startup"]["engine_setup"]["load_s"] > 0
        _image(rt, 1)  # after its first job, the slot gets its spare
        spare = _loaded_spare(rt)
        assert spare["preload"]["state"] == "loaded" and spare["preload"]["seconds"] > 0
        assert spare["preload"]["reason"] is None and spare["rss_mib"] > 0
        # From here a load from disk cannot work: the restarted worker can only run on the
        # pipeline the spare already holds (its header is intact, so the model still checks out).
        # Swapped by rename, never rewritten in place: loaded safetensors weights can be mapped
        # from the file, and an in-place write would change the spare's copy too.
        good = weights.with_name("good.safetensors")
        os.replace(weights, good)
        spoiled = weights.with_name("spoiled.tmp")
        head = good.read_bytes()[:8]
        keep = 8 + int.from_bytes(head, "little")  # the header stays valid (the model check reads it); the weights are zeros
        spoiled.write_bytes(good.read_bytes()[:keep] + b"\0" * (good.stat().st_size - keep))
        os.replace(spoiled, weights)
        os.kill(first["pid"], signal.SIGKILL)
        startup = _restarted_from(rt, first["pid"], spare["pid"])["startup"]
        os.replace(good, weights)  # the next spare may load from disk again
        assert startup["source"] == "standby+preloaded", startup
        assert startup["standby"]["preloaded"] is True
        assert startup["standby"]["preload_s"] == spare["preload"]["seconds"]
        got = _image(rt, 7)
    finally:
        rt.close()
    want = _fresh_engine_pixels(tmp_path, 7)
    assert got.shape == want.shape and got.std() > 0
    assert abs(got - want).max() == 0
