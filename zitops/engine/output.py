"""Encode images for clients: PNG (with parameters in text chunks), JPEG, WebP.

torch-free. PNG uses a fast compression level, because a compression level of
9 costs more CPU time than the image is worth on a busy worker.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from zitops.errors import InvalidRequest

PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 92
WEBP_QUALITY = 90
TEXT_KEYS = ("prompt", "negative_prompt", "seed", "sampler", "schedule", "steps", "size", "guidance",
             "profile", "model")


def a1111_infotext(params: Mapping[str, Any]) -> str:
    """The A1111 "parameters" text: prompt, negative prompt, then ``Key: value`` pairs."""
    from zitops.engine.samplers import display_name

    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    schedule = str(params.get("schedule", "simple"))
    pairs = [
        ("Steps", params.get("steps")),
        ("Sampler", display_name(str(params.get("sampler", "euler")))),
        ("Schedule type", schedule.capitalize()),
        ("CFG scale", params.get("guidance", 0.0)),
        ("Seed", params.get("seed")),
        ("Size", params.get("size")),
        ("Model", params.get("model")),
        ("Profile", params.get("profile")),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs if v is not None and v != ""))
    return "\n".join(lines)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def encode_image(img: Any, fmt: str, params: Mapping[str, Any] | None = None) -> bytes:
    """Encode a PIL image as ``png``, ``jpeg`` or ``webp``; PNG carries ``params`` as text chunks."""
    from PIL import PngImagePlugin

    params = dict(params or {})
    if "size" not in params and hasattr(img, "size"):
        params["size"] = f"{img.size[0]}x{img.size[1]}"
    fmt = fmt.lower()
    if fmt != "png" and hasattr(img, "to_pil"):
        img = img.to_pil()  # the agent's pixel view (zitops.agent.dispatch.images.Pixels): PIL for these
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        for key in TEXT_KEYS:
            if key in params and params[key] is not None:
                value = _text(params[key])
                # tEXt is Latin-1 only; Chinese prompts need iTXt (UTF-8).
                if value.isascii():
                    info.add_text(key, value)
                else:
                    info.add_itxt(key, value)
        if params.get("tiny"):
            info.add_text("zitops_notice", "tiny random model: images are noise")
        info.add_itxt("parameters", a1111_infotext(params))
        from zitops.engine.png_fast import encode_png

        # Pillow's one-core encoder took ~200 ms per 1024x1024 image, most of
        # the agent's overhead per request (issue 7, docs/benchmarks.md).
        # Returned as is: a BytesIO round trip would copy the 3 MB twice more.
        return encode_png(img, info.chunks, PNG_COMPRESS_LEVEL)
    if fmt in ("jpeg", "jpg"):
        comment = a1111_infotext(params).encode("utf-8") if params else b""
        img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, comment=comment)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=WEBP_QUALITY)
    else:
        raise InvalidRequest(f"output_format: {fmt!r}; valid: png, jpeg, webp")
    return buf.getvalue()


def format_for_path(path: str, default: str = "png") -> str:
    """The output format implied by a file name's suffix (``.png``, ``.jpg``, ``.webp``)."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}.get(suffix, default)
