"""ControlNet fields at the edge: A1111's ``alwayson_scripts.controlnet`` units and the native ``control`` field.

Both become one :class:`ControlAsk`, and :func:`control_overrides` turns it
into request fields: the control image bounded and re-encoded like init
images (zitops.agent.http.image_input), canny edges computed here when asked
(zitops.agent.http.canny), and a 422 naming the field when this agent has no
ControlNet. sd-webui-controlnet unit fields that map are honoured, fields at
their neutral values are accepted, and the rest are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field, ValidationError

from zitops.agent.http.api_common import context
from zitops.agent.http.image_input import decode_off_loop, from_base64, open_image, to_png_b64
from zitops.agent.http.json_guard import NAME_CAP, Body, Flag, Num
from zitops.config import AgentConfig
from zitops.engine.features.controlnet import NO_CONTROLNET
from zitops.engine.request import CONTROL_TYPES, MAX_CONTROL_STRENGTH
from zitops.errors import InvalidRequest

SCRIPT = "controlnet"
"""The alwayson_scripts key (any case: webuiapi sends "ControlNet")."""
UNIT = "alwayson_scripts.controlnet.args"
RESIZE = {"just": "just", "crop": "crop", "fill": "fill", 0: "just", 1: "crop", 2: "fill",
          "Just Resize": "just", "Crop and Resize": "crop", "Resize and Fill": "fill",
          "ResizeMode.RESIZE": "just", "ResizeMode.INNER_FIT": "crop", "ResizeMode.OUTER_FIT": "fill"}
CANNY_DEFAULTS = (100.0, 200.0)
MODEL_MODULES = ("depth", "openpose", "dw_openpose", "densepose", "animal_openpose", "normal", "lineart",
                 "softedge", "hed", "pidinet", "mlsd", "scribble", "seg", "tile", "shuffle", "reference",
                 "ip-adapter", "inpaint", "recolor", "blur", "invert", "threshold", "mediapipe")


@dataclass(frozen=True)
class ControlAsk:
    """A control image as the client sent it, and what to do with it."""

    field: str
    data: bytes
    type: str
    strength: float
    preprocess: str = "none"  # "none" (a ready map) or "canny"
    low: float = CANNY_DEFAULTS[0]
    high: float = CANNY_DEFAULTS[1]
    resize: str = "just"


class ControlIn(Body):
    """Native ``control``: a control map (or, with preprocess canny, a photo) for the Union ControlNet."""

    image: str = Field(min_length=1, description="Base64 PNG, JPEG or WebP (limits.max_image_body_bytes, "
                                                 "limits.max_image_pixels): a ready canny/depth/pose map, "
                                                 "or a photo with preprocess=canny.")
    type: Literal[CONTROL_TYPES] = "canny"  # type: ignore[valid-type]
    strength: Num = Field(0.75, ge=0, le=MAX_CONTROL_STRENGTH, allow_inf_nan=False,
                          description="Conditioning scale; 0 leaves the image as without control.")
    preprocess: Literal["none", "canny"] = Field("none", description="canny: the server draws the edges "
                                                                     "(depth and pose maps must be sent ready).")
    low_threshold: Num = Field(CANNY_DEFAULTS[0], ge=0, le=1020, allow_inf_nan=False)
    high_threshold: Num = Field(CANNY_DEFAULTS[1], ge=0, le=1020, allow_inf_nan=False)
    resize: Literal["just", "crop", "fill"] = Field("just", description="Fitting the map to the output size: "
                                                                       "stretch, crop to the aspect, or pad.")

    def ask(self) -> ControlAsk:
        """The ask behind this field; InvalidRequest naming a field that does not fit."""
        if self.preprocess == "canny" and self.type != "canny":
            raise InvalidRequest(f"control.preprocess: canny draws a canny map; set type canny, or send a ready "
                                 f"{self.type} map with preprocess none")
        return ControlAsk("control.image", from_base64("control.image", self.image), self.type, self.strength,
                          self.preprocess, self.low_threshold, self.high_threshold, self.resize)


class A1111Unit(Body):
    """One sd-webui-controlnet unit: the fields zitops maps or accepts at their neutral values."""

    enabled: Flag = True
    image: str | dict[str, Any] | None = None
    input_image: str | None = None
    mask: str | None = None
    mask_image: str | None = None
    module: str = Field("none", max_length=NAME_CAP)
    model: str = Field("None", max_length=NAME_CAP)
    weight: Num = Field(1.0, ge=0, le=MAX_CONTROL_STRENGTH, allow_inf_nan=False)
    resize_mode: str | int = "Crop and Resize"
    low_vram: Flag = False
    processor_res: int = Field(512, ge=-1, le=8192)
    threshold_a: Num = Field(-1, ge=-1, le=1020, allow_inf_nan=False)
    threshold_b: Num = Field(-1, ge=-1, le=1020, allow_inf_nan=False)
    guidance_start: Num = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    guidance_end: Num = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    control_mode: str | int = "Balanced"
    pixel_perfect: Flag = False
    hr_option: str = Field("Both", max_length=NAME_CAP)
    save_detected_map: Flag = True
    union_control_type: str | None = Field(None, max_length=NAME_CAP)


def _unit_problem(index: int, exc: ValidationError) -> InvalidRequest:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return InvalidRequest(f"{UNIT}[{index}].{where}: not supported by zitops (accepted: "
                              f"{', '.join(A1111Unit.model_fields)})")
    return InvalidRequest(f"{UNIT}[{index}].{where}: {err['msg']}")


def _unit_type(unit: A1111Unit) -> str:
    """The map's kind from union_control_type, the module or the model's name (recorded; canny if none says)."""
    for text in (unit.union_control_type or "", unit.module, unit.model):
        low = text.lower()
        for kind in CONTROL_TYPES:
            if kind in low:
                return kind
    return "canny"


def _unit_ask(index: int, unit: A1111Unit) -> ControlAsk:
    where = f"{UNIT}[{index}]"
    if unit.mask or unit.mask_image or (isinstance(unit.image, dict) and unit.image.get("mask")):
        raise InvalidRequest(f"{where}.mask: ControlNet masks are not supported; send null")
    if unit.guidance_start != 0 or unit.guidance_end != 1:
        raise InvalidRequest(f"{where}.guidance_start: control over part of the steps is not supported; "
                             "send guidance_start 0 and guidance_end 1")
    if unit.control_mode not in (0, "Balanced", "ControlMode.BALANCED"):
        raise InvalidRequest(f"{where}.control_mode: only Balanced (0) is supported")
    resize = RESIZE.get(unit.resize_mode)
    if resize is None:
        raise InvalidRequest(f"{where}.resize_mode: {unit.resize_mode!r}; valid: Just Resize, Crop and Resize, "
                             "Resize and Fill (or 0, 1, 2)")
    module = unit.module.strip().lower()
    if module not in ("none", "", "canny"):
        if module.startswith(MODEL_MODULES):
            raise InvalidRequest(f"{where}.module: {unit.module!r} needs a preprocessor model zitops does not run; "
                                 "send a ready map with module none (canny is the one zitops runs)")
        raise InvalidRequest(f"{where}.module: {unit.module!r}; valid: none (a ready map), canny")
    image = unit.image.get("image") if isinstance(unit.image, dict) else unit.image
    image = image or unit.input_image
    if not image:
        raise InvalidRequest(f"{where}.image: missing; send the control image (base64) in image or input_image")
    if not isinstance(image, str):
        raise InvalidRequest(f"{where}.image: must be base64 text")
    low = unit.threshold_a if unit.threshold_a >= 0 else CANNY_DEFAULTS[0]
    high = unit.threshold_b if unit.threshold_b >= 0 else CANNY_DEFAULTS[1]
    return ControlAsk(f"{where}.image", from_base64(f"{where}.image", image), _unit_type(unit), unit.weight,
                      "canny" if module == "canny" else "none", low, high, resize)


def other_scripts(scripts: dict[str, Any]) -> list[str]:
    """The alwayson_scripts zitops does not run (everything but controlnet)."""
    return sorted(name for name in scripts if name.lower() != SCRIPT)


def a1111_control(scripts: dict[str, Any]) -> ControlAsk | None:
    """The one enabled ControlNet unit of ``alwayson_scripts``, or None; InvalidRequest naming a bad field."""
    entry = next((value for name, value in scripts.items() if name.lower() == SCRIPT), None)
    if entry is None:
        return None
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list) or set(entry) - {"args"}:
        raise InvalidRequest("alwayson_scripts.controlnet: send {\"args\": [unit, ...]} (sd-webui-controlnet units)")
    asks = []
    for index, raw in enumerate(args):
        if not isinstance(raw, dict):
            raise InvalidRequest(f"{UNIT}[{index}]: a unit must be an object (sd-webui-controlnet's unit format)")
        try:
            unit = A1111Unit.model_validate(raw)
        except ValidationError as exc:
            raise _unit_problem(index, exc) from None
        if unit.enabled:
            asks.append(_unit_ask(index, unit))
    if len(asks) > 1:
        raise InvalidRequest(f"{UNIT}: {len(asks)} enabled units; zitops runs one ControlNet unit per request")
    return asks[0] if asks else None


def _control_png(config: AgentConfig, ask: ControlAsk) -> str:
    limits = config.limits
    image = open_image(ask.field, ask.data, max_bytes=limits.max_image_body_bytes, max_pixels=limits.max_image_pixels)
    if ask.preprocess == "canny":
        from zitops.agent.http.canny import canny

        image = canny(image, ask.low, ask.high)
    return to_png_b64(image, "RGB")


async def control_overrides(config: AgentConfig, ask: ControlAsk | None,
                            request: Request | None = None) -> dict[str, Any]:
    """``control_*`` request fields for ``ask`` (none without one); a 422 when no ControlNet is deployed.

    Decoding and canny run on a thread: a large image takes time the event loop must not wait.
    """
    if ask is None:
        return {}
    if not config.controlnet_dir:
        raise InvalidRequest(NO_CONTROLNET)
    if not (Path(config.controlnet_dir) / "config.json").is_file():
        raise InvalidRequest(f"control: the ControlNet directory {config.controlnet_dir} has no config.json "
                             "(a diffusers-format ControlNet is needed); ask the operator")
    png = await decode_off_loop(ask.field, _control_png, config, ask, request=request)
    return {"control_image": png, "control_type": ask.type, "control_strength": ask.strength,
            "control_resize": ask.resize}


router = APIRouter(tags=["a1111"])


@router.get("/controlnet/version")
async def controlnet_version() -> dict[str, int]:
    """sd-webui-controlnet's API version, which clients probe before sending units."""
    return {"version": 2}


@router.get("/controlnet/model_list")
async def controlnet_model_list(request: Request) -> dict[str, list[str]]:
    """The deployed ControlNet (its directory name), or none."""
    directory = context(request).config.controlnet_dir
    return {"model_list": [Path(directory).name] if directory else []}


@router.get("/controlnet/module_list")
async def controlnet_module_list() -> dict[str, list[str]]:
    """Preprocessors zitops runs: none (a ready map) and canny."""
    return {"module_list": ["none", "canny"]}
