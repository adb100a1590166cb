"""What a failure record keeps of a job's request: the parameters without the prompt, a prefix of the
negative prompt, and each input image as its size and hash, never its pixels (used by
:class:`zitops.logbook.failures.FailureStore`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

PROMPT_PREFIX_CHARS = 50

IMAGE_PARAMS = ("init_image", "mask", "control_image")
"""Request fields that carry an image (base64): a record keeps its size and hash, never the pixels."""


def image_summary(b64: str) -> dict[str, Any]:
    """What a failure record keeps of an input image: bytes, sha256 and (from the header) width x height."""
    import base64
    import binascii
    import hashlib
    import io

    try:
        raw = base64.b64decode(b64.split(",", 1)[-1] if b64.startswith("data:") else b64, validate=False)
    except (binascii.Error, ValueError):
        raw = b64.encode("utf-8", "surrogateescape")
    out: dict[str, Any] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    with contextlib.suppress(Exception):  # any undecodable header: sizes and hash are still kept
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as im:  # reads the header only
            out["size"] = f"{im.width}x{im.height}"
    return out


def _params(params: dict[str, Any]) -> dict[str, Any]:
    # The record keeps a prompt prefix only (size, and users' text is theirs):
    # a full prompt inside the parameters would undo that.
    out = {k: v for k, v in params.items() if k != "prompt"}
    for key in IMAGE_PARAMS:
        if isinstance(out.get(key), str):
            out[key] = image_summary(out[key])
    if isinstance(out.get("negative_prompt"), str):
        out["negative_prompt"] = out["negative_prompt"][:PROMPT_PREFIX_CHARS]
    result: dict[str, Any] = _jsonable(out)
    return result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
