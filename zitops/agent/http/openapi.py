"""The published OpenAPI states this agent's own limits, not just the models' hard ceilings.

The request models carry static bounds (the highest any config may allow),
so a huge number is refused before anything uses it. The running agent's
``limits`` are tighter, and clients generate code from the schema, so
:func:`publish_limits` writes them into the generated document: sides,
steps, images, prompt length, the seed range, OpenAI's ``size`` pattern and
A1111's ``batch_size x n_iter`` rule, and the LoRA names this agent has now
(:func:`publish_loras`, read again each time the document is served). What a
schema cannot say (the cost budget, a full queue) is a documented 422 or 429.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from zitops.config import Limits
from zitops.engine.features.lora_files import list_loras
from zitops.engine.request import MAX_SEED

Kind = str  # "side" | "steps" | "images" | "prompt" | "seed" | "size"

FIELDS: dict[str, dict[str, Kind]] = {
    "JobIn": {"width": "side", "height": "side", "steps": "steps", "batch": "images", "prompt": "prompt",
              "negative_prompt": "prompt", "seed": "seed"},
    "ImageGenerationIn": {"n": "images", "steps": "steps", "prompt": "prompt", "negative_prompt": "prompt",
                          "seed": "seed", "size": "size"},
    "Txt2ImgIn": {"width": "side", "height": "side", "steps": "steps", "batch_size": "images",
                  "n_iter": "images", "prompt": "prompt", "negative_prompt": "prompt", "seed": "seed"},
}
"""Model name -> field -> which limit bounds it."""


def side_pattern(min_side: int, max_side: int) -> str:
    """``WIDTHxHEIGHT`` with both sides multiples of 16 within the limits, as one regular expression."""
    sides = "|".join(str(v) for v in range(max_side - max_side % 16, min_side - 1, -16))
    return f"^(?:{sides})x(?:{sides})$|^auto$"


def _branch(prop: dict[str, Any]) -> dict[str, Any]:
    # Optional fields are anyOf [{type: X, ...}, {type: null}]: bound the X.
    for option in prop.get("anyOf", ()):
        if option.get("type") not in (None, "null"):
            return option
    return prop


def _bounded(prop: dict[str, Any], kind: Kind, limits: Limits) -> None:
    target = _branch(prop)
    if kind == "side":
        target.update(minimum=limits.min_side, maximum=limits.max_side, multipleOf=16)
    elif kind == "steps":
        target.update(minimum=1, maximum=limits.max_steps)
    elif kind == "images":
        target.update(minimum=1, maximum=limits.max_images)
    elif kind == "prompt":
        target["maxLength"] = limits.max_prompt_chars
    elif kind == "seed":
        # Image i uses seed + i, and every seed must fit 32 bits.
        target.update(minimum=-1, maximum=MAX_SEED - (limits.max_images - 1))
    elif kind == "size":
        target.pop("maxLength", None)
        target["pattern"] = side_pattern(limits.min_side, limits.max_side)


def product_rule(max_images: int) -> list[dict[str, Any]]:
    """A1111's ``batch_size x n_iter <= max_images`` as JSON Schema ``anyOf`` branches."""
    branches: list[dict[str, Any]] = [{"not": {"required": ["n_iter"]}}]
    for n in range(1, max_images + 1):
        branches.append({"required": ["n_iter"], "properties": {
            "n_iter": {"const": n}, "batch_size": {"maximum": max_images // n}}})
    return branches


STREAM_RULE: list[dict[str, Any]] = [
    {"not": {"required": ["partial_images"]}},
    {"properties": {"partial_images": {"enum": [0, None]}}},
    {"required": ["stream"], "properties": {"stream": {"const": True}}},
]
"""OpenAI's ``partial_images`` (above 0) only with ``stream: true``, as ``anyOf`` branches."""

MASK_RULE: dict[str, list[str]] = {"mask": ["init_image"]}
"""A native job's ``mask`` needs its ``init_image`` (JSON Schema ``dependentRequired``)."""


def publish_limits(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Write ``limits`` into a generated OpenAPI document, in place; returns it."""
    components = schema.get("components", {}).get("schemas", {})
    for model, fields in FIELDS.items():
        props = components.get(model, {}).get("properties", {})
        for name, kind in fields.items():
            if name in props:
                _bounded(props[name], kind, limits)
    if "Txt2ImgIn" in components:
        components["Txt2ImgIn"]["anyOf"] = product_rule(limits.max_images)
    if "partial_images" in components.get("ImageGenerationIn", {}).get("properties", {}):
        components["ImageGenerationIn"]["anyOf"] = STREAM_RULE
    if "mask" in components.get("JobIn", {}).get("properties", {}):
        components["JobIn"]["dependentRequired"] = MASK_RULE
    return schema


LORA_REF = "#/components/schemas/LoraIn"


def publish_loras(schema: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Say which LoRA names exist: an enum on ``LoraIn.name``, or no ``loras`` items at all when none do."""
    components = schema.get("components", {}).get("schemas", {})
    lora = components.get("LoraIn", {}).get("properties", {}).get("name")
    if lora is not None:
        lora.pop("enum", None)
        if names:
            lora["enum"] = names
    for model in components.values():
        for prop in model.get("properties", {}).values():
            if prop.get("type") == "array" and prop.get("items", {}).get("$ref") == LORA_REF:
                prop.pop("maxItems", None) if names else prop.update(maxItems=0)
    return schema


UNIT_NEUTRAL: dict[str, list[Any]] = {
    "module": ["none", "canny"], "guidance_start": [0], "guidance_end": [1], "control_mode": [0, "Balanced"],
    "resize_mode": ["Just Resize", "Crop and Resize", "Resize and Fill", 0, 1, 2],
    "mask": [None, ""], "mask_image": [None, ""],
}
"""A1111 ControlNet unit fields published as the values zitops accepts."""


def publish_controlnet(schema: dict[str, Any], deployed: bool) -> dict[str, Any]:
    """Say whether ControlNet requests are accepted: the unit format on txt2img, or ``control`` only null."""
    components = schema.get("components", {}).get("schemas", {})
    job = components.get("JobIn", {}).get("properties", {})
    if not deployed:
        if "control" in job:
            job["control"] = {"type": "null", "description": "No ControlNet is deployed on this agent."}
        components.pop("ControlIn", None)
        return schema
    from zitops.agent.http.api_control import A1111Unit

    unit = A1111Unit.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, values in UNIT_NEUTRAL.items():
        if name in unit["properties"]:
            unit["properties"][name] = {"enum": values, "default": values[0]}
    unit.pop("$defs", None)
    components["A1111ControlNetUnit"] = unit
    scripts = components.get("Txt2ImgIn", {}).get("properties", {})
    if "alwayson_scripts" in scripts:
        scripts["alwayson_scripts"] = {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "Only controlnet: one enabled sd-webui-controlnet unit (docs/features.md).",
            "properties": {"controlnet": {
                "type": "object", "additionalProperties": False, "required": ["args"],
                "properties": {"args": {"type": "array", "maxItems": 1,
                                        "items": {"$ref": "#/components/schemas/A1111ControlNetUnit"}}}}}}
    return schema


def install(app: FastAPI, limits: Limits, lora_dir: str | None = None, controlnet: bool = False) -> None:
    """Make ``app.openapi()`` publish ``limits`` and whether ControlNet is on (once; FastAPI caches the
    document) and the LoRA names."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    done: list[bool] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not done:
            publish_limits(schema, limits)
            publish_controlnet(schema, controlnet)
            done.append(True)
        # LoRA files come and go while the agent runs: the names are read each time.
        return publish_loras(schema, sorted(list_loras(lora_dir)))

    app.openapi = openapi  # type: ignore[method-assign]
