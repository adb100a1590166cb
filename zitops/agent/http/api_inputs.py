"""What the image routes share: LoRA fields and input images turned into request overrides.

Used by the native, OpenAI and A1111 routes, so every API checks LoRA names
and input images with the same rules and messages.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import Field

from zitops.agent.http.image_input import checked_png, decode_off_loop, default_size
from zitops.agent.http.json_guard import NAME_CAP, Body, Num
from zitops.config import AgentConfig
from zitops.engine.features.lora_files import FP8_REFUSAL, check_loras
from zitops.errors import InvalidRequest


class LoraIn(Body):
    """One LoRA by name (its file name in the LoRA directory, without .safetensors) and weight."""

    name: str = Field(min_length=1, max_length=NAME_CAP)
    weight: Num = Field(1.0, ge=-4, le=4, allow_inf_nan=False)


def lora_overrides(config: AgentConfig, wanted: list[tuple[str, float]], field: str = "loras") -> dict[str, Any]:
    """``{"loras": ...}`` for build_request, every name known; InvalidRequest naming ``field`` otherwise."""
    if not wanted:
        return {}
    if config.profile.engine.fp8:
        raise InvalidRequest(FP8_REFUSAL.replace("loras:", f"{field}:", 1))
    return {"loras": check_loras(wanted, config.lora_dir, field)}


async def image_overrides(config: AgentConfig, init: bytes, mask: bytes | None, *,
                          names: tuple[str, str] = ("init_image", "mask"), invert: bool = False,
                          alpha_mask: bool = False, request: Request | None = None) -> dict[str, Any]:
    """``init_image``/``mask`` (checked, re-encoded PNG) plus a default size from the input image.

    Decoding runs on the bounded decode pool with a time budget (image_input.decode_off_loop):
    a large image takes tens of milliseconds the event loop must not wait.
    """
    init_png, size = await decode_off_loop(names[0], checked_png, config, names[0], init, "RGB",
                                             request=request)
    out: dict[str, Any] = {"init_image": init_png, "default_size": default_size(size, config)}
    if mask is not None:
        out["mask"], _ = await decode_off_loop(names[1], checked_png, config, names[1], mask, "L", invert=invert,
                                               alpha_mask=alpha_mask, request=request)
    return out


def sized(overrides: dict[str, Any]) -> dict[str, Any]:
    """Fill width and height the client left out from the input image's ``default_size``."""
    out = dict(overrides)
    default = out.pop("default_size", None)
    if default is not None:
        out["width"] = out.get("width") or default[0]
        out["height"] = out.get("height") or default[1]
    return out
