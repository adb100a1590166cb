"""AUTOMATIC1111 compatible: ``/sdapi/v1/txt2img`` and the lookups its clients call.

The request model carries A1111's whole txt2img schema. Fields that map onto
zitops are honoured; fields at A1111's neutral defaults are accepted without
comment; a field that asks for something zitops cannot do (hires fix, scripts,
face restoration, ...) gets a 422 that names it. See docs/api.md, including
why ``cfg_scale: 7`` (A1111's default) means "the profile's guidance".
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from zitops.agent.contract import JobRecord
from zitops.agent.http.api_common import (
    ApiContext,
    build_request_as,
    context,
    discard_files,
    drop_encoded,
    images_json,
    inline_delivery,
    json_fragments,
    request_started,
    submit,
    sync_timeout_s,
    timed_json,
    wait_final,
)
from zitops.agent.http.api_control import a1111_control, control_overrides, other_scripts
from zitops.agent.http.api_inputs import lora_overrides
from zitops.agent.http.http_errors import EDGE_CODES, ERROR_RESPONSES, responses
from zitops.agent.http.json_guard import (
    IMAGES_CAP,
    NAME_CAP,
    PROMPT_CAP,
    PROMPT_PATTERN,
    SEED_CAP,
    SIDE_CAP,
    STEPS_CAP,
    TEXT_PATTERN,
    Body,
    Flag,
    Num,
    only,
)
from zitops.agent.http.tenants import caller
from zitops.config import AgentConfig
from zitops.engine.features.lora_files import strip_prompt_loras
from zitops.engine.samplers import (
    SAMPLER_INFO,
    SCHEDULE_INFO,
    display_name,
    resolve_sampler,
    resolve_schedule,
)
from zitops.errors import InvalidRequest

router = APIRouter(tags=["a1111"], responses=responses(*EDGE_CODES))

_A1111_NAMES = {"guidance": "cfg_scale", "batch": "batch_size", "sampler": "sampler_name", "schedule": "scheduler"}

A1111_DEFAULT_CFG = 7.0
"""What every A1111 client sends when its user set nothing; see docs/api.md."""


def _sampler_names() -> list[str]:
    names: list[str] = []
    for info in SAMPLER_INFO:
        names += [info["name"], f"{info['name']} Karras", f"{info['name']} Exponential", info["sampler"],
                  *info["aliases"]]
    return list(dict.fromkeys(names))


def _schedule_names() -> list[str]:
    names = ["", "automatic", "Automatic", "auto"]
    for info in SCHEDULE_INFO:
        names += [info["label"], info["name"], *info["aliases"]]
    return list(dict.fromkeys(names))


SAMPLER_NAMES = _sampler_names()
"""Every sampler name the schema offers (resolve_sampler also takes other spellings of them)."""
SCHEDULE_NAMES = _schedule_names()

_UNSET = ("", "None", "none", None)
"""What A1111 clients send for "no script/refiner/...": accepted, and all the schema offers."""
_ANY_SIDE = Field(0, ge=0, le=SIDE_CAP)


class Txt2ImgIn(Body):
    """A1111's StableDiffusionTxt2ImgProcessingAPI, every field but the prompt optional.

    Fields zitops cannot honour are published at their neutral values only
    (``only``); the route still names such a field when a client sends more.
    """

    prompt: str = Field(min_length=1, max_length=PROMPT_CAP, pattern=PROMPT_PATTERN)
    negative_prompt: str = Field("", max_length=PROMPT_CAP, pattern=TEXT_PATTERN)
    styles: list[str] | None = Field(None, json_schema_extra=only(None, []))
    seed: int = Field(-1, ge=-1, le=SEED_CAP, description="-1: random; image i uses seed + i.")
    subseed: int = Field(-1, ge=-1, le=SEED_CAP)
    subseed_strength: Num = Field(0.0, allow_inf_nan=False, json_schema_extra=only(0))
    seed_resize_from_h: int = Field(-1, ge=-1, le=SIDE_CAP, json_schema_extra=only(-1, 0))
    seed_resize_from_w: int = Field(-1, ge=-1, le=SIDE_CAP, json_schema_extra=only(-1, 0))
    sampler_name: str | None = Field(None, max_length=NAME_CAP, json_schema_extra=only(None, *SAMPLER_NAMES))
    sampler_index: str | None = Field(None, max_length=NAME_CAP, json_schema_extra=only(None, *SAMPLER_NAMES))
    scheduler: str | None = Field(None, max_length=NAME_CAP, json_schema_extra=only(None, *SCHEDULE_NAMES))
    batch_size: int = Field(1, ge=1, le=IMAGES_CAP, description="batch_size x n_iter <= limits.max_images.")
    n_iter: int = Field(1, ge=1, le=IMAGES_CAP, description="batch_size x n_iter <= limits.max_images.")
    steps: int | None = Field(None, ge=1, le=STEPS_CAP)
    cfg_scale: Num | None = Field(None, ge=0, le=20, allow_inf_nan=False,
                                    description="7 (A1111's default): the profile's guidance; 0..1: none.")
    distilled_cfg_scale: Num | None = Field(None, json_schema_extra=only(None, 3.5))
    width: int | None = Field(None, ge=16, le=SIDE_CAP, multiple_of=16)
    height: int | None = Field(None, ge=16, le=SIDE_CAP, multiple_of=16)
    restore_faces: Flag | None = Field(None, json_schema_extra=only(None, False))
    tiling: Flag | None = Field(None, json_schema_extra=only(None, False))
    do_not_save_samples: Flag = False
    do_not_save_grid: Flag = False
    eta: Num | None = Field(None, json_schema_extra=only(None, 0, 1))
    denoising_strength: Num | None = Field(None, ge=0, le=1)
    s_min_uncond: Num | None = Field(None, json_schema_extra=only(None, 0))
    s_churn: Num | None = Field(None, json_schema_extra=only(None, 0))
    s_tmax: Num | None = Field(None, json_schema_extra=only(None, 0))
    s_tmin: Num | None = Field(None, json_schema_extra=only(None, 0))
    s_noise: Num | None = Field(None, json_schema_extra=only(None, 1))
    override_settings: dict[str, Any] | None = Field(None, json_schema_extra=only(None, {}))
    override_settings_restore_afterwards: Flag = True
    refiner_checkpoint: str | None = Field(None, max_length=NAME_CAP, json_schema_extra=only(*_UNSET))
    refiner_switch_at: Num | None = Field(None, ge=0, le=1)
    disable_extra_networks: Flag = False
    firstpass_image: str | None = Field(None, json_schema_extra=only(None, ""))
    comments: dict[str, Any] | None = None
    enable_hr: Flag = Field(False, json_schema_extra=only(False))
    firstphase_width: int = _ANY_SIDE
    firstphase_height: int = _ANY_SIDE
    hr_scale: Num = Field(2.0, ge=0, le=16)
    hr_upscaler: str | None = Field(None, max_length=NAME_CAP)
    hr_second_pass_steps: int = Field(0, ge=0, le=STEPS_CAP)
    hr_resize_x: int = _ANY_SIDE
    hr_resize_y: int = _ANY_SIDE
    hr_checkpoint_name: str | None = Field(None, max_length=NAME_CAP)
    hr_sampler_name: str | None = Field(None, max_length=NAME_CAP)
    hr_scheduler: str | None = Field(None, max_length=NAME_CAP)
    hr_prompt: str = Field("", max_length=PROMPT_CAP)
    hr_negative_prompt: str = Field("", max_length=PROMPT_CAP)
    hr_additional_modules: list[str] | None = Field(None, max_length=64)
    hr_distilled_cfg: Num | None = Field(None, ge=0, le=100)
    force_task_id: str | None = Field(None, max_length=NAME_CAP)
    script_name: str | None = Field(None, max_length=NAME_CAP, json_schema_extra=only(*_UNSET))
    script_args: list[Any] = Field(default_factory=list, max_length=256)
    send_images: Flag = True
    save_images: Flag = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, json_schema_extra=only({}))
    infotext: str | None = Field(None, max_length=PROMPT_CAP, json_schema_extra=only(None, ""))


def _set(value: str | None) -> bool:
    return bool(value) and str(value).strip().lower() not in ("none", "")


def refuse_unsupported(body: Txt2ImgIn) -> None:
    """422 naming the first field that asks for something zitops cannot do."""
    checks: list[tuple[str, bool, str]] = [
        ("enable_hr", body.enable_hr, "hires fix is not supported; send false"),
        ("script_name", _set(body.script_name), "scripts are not supported; send null"),
        ("alwayson_scripts", bool(other_scripts(body.alwayson_scripts)),
         f"scripts are not supported ({', '.join(other_scripts(body.alwayson_scripts))[:80]}); "
         "only controlnet is"),
        ("restore_faces", bool(body.restore_faces), "face restoration is not supported; send false"),
        ("tiling", bool(body.tiling), "tiling is not supported; send false"),
        ("override_settings", bool(body.override_settings),
         f"settings overrides are not supported ({', '.join(sorted(body.override_settings or {}))[:80]}); send {{}}"),
        ("refiner_checkpoint", _set(body.refiner_checkpoint), "refiners are not supported; send null"),
        ("firstpass_image", bool(body.firstpass_image), "a first-pass image is not supported; send null"),
        ("styles", bool(body.styles), "saved styles are not supported; put the text in the prompt"),
        ("subseed_strength", body.subseed_strength != 0, "variation seeds are not supported; send 0"),
        ("seed_resize_from_h", body.seed_resize_from_h > 0, "seed resizing is not supported; send -1 or 0"),
        ("seed_resize_from_w", body.seed_resize_from_w > 0, "seed resizing is not supported; send -1 or 0"),
        ("infotext", _set(body.infotext), "infotext parsing is not supported; send the fields instead"),
        ("distilled_cfg_scale", body.distilled_cfg_scale not in (None, 3.5),
         "Z-Image-Turbo has no distilled guidance input; omit it"),
        ("eta", body.eta not in (None, 0.0, 1.0), "only the default eta (1) is supported"),
        ("s_churn", body.s_churn not in (None, 0.0), "sampler noise settings are not supported; send 0"),
        ("s_tmin", body.s_tmin not in (None, 0.0), "sampler noise settings are not supported; send 0"),
        ("s_tmax", body.s_tmax not in (None, 0.0) and not (body.s_tmax is not None and math.isinf(body.s_tmax)),
         "sampler noise settings are not supported; send 0"),
        ("s_noise", body.s_noise not in (None, 1.0), "sampler noise settings are not supported; send 1"),
        ("s_min_uncond", body.s_min_uncond not in (None, 0.0), "negative-guidance skipping is not supported; send 0"),
    ]
    for name, bad, why in checks:
        if bad:
            raise InvalidRequest(f"{name}: {why}")


def _sampler_and_schedule(body: Txt2ImgIn) -> tuple[str | None, str | None]:
    name = body.sampler_name or body.sampler_index
    sampler: str | None = None
    schedule: str | None = None
    if name:
        try:
            sampler, schedule = resolve_sampler(name)
        except InvalidRequest as exc:
            field = "sampler_name" if body.sampler_name else "sampler_index"
            raise InvalidRequest(field + str(exc).removeprefix("sampler")) from None
    # "Automatic" is A1111's "the sampler decides": keep the sampler's or the profile's schedule.
    if body.scheduler and body.scheduler.strip().lower() not in ("automatic", "auto", ""):
        try:
            schedule = resolve_schedule(body.scheduler)
        except InvalidRequest as exc:
            raise InvalidRequest("scheduler" + str(exc).removeprefix("schedule")) from None
    return sampler, schedule


def guidance_from(cfg_scale: float | None) -> float | None:
    """A1111 cfg_scale -> zitops guidance; None (the profile's) for A1111's untouched default 7."""
    if cfg_scale is None or cfg_scale == A1111_DEFAULT_CFG:
        return None
    if not math.isfinite(cfg_scale):
        raise InvalidRequest("cfg_scale: must be a finite number")
    # A1111 treats cfg_scale 1 as "no guidance"; zitops spells that 0.
    return 0.0 if cfg_scale <= 1.0 and cfg_scale >= 0 else cfg_scale


def model_title(model: str) -> str:
    """The name A1111 clients see for the served model: the weights directory's name."""
    return "Z-Image-Turbo-tiny" if model == "tiny" else (model.rstrip("/").rsplit("/", 1)[-1] or model)


def _info(body: Txt2ImgIn, record: JobRecord, model: str) -> dict[str, Any]:
    req = record.request
    total = len(req.seeds)
    sampler = display_name(req.sampler)
    schedule_label = next((s["label"] for s in SCHEDULE_INFO if s["name"] == req.schedule), req.schedule)
    infotexts = [
        (f"{req.prompt}\nNegative prompt: {req.negative_prompt}\n" if req.negative_prompt else f"{req.prompt}\n")
        + f"Steps: {req.steps}, Sampler: {sampler}, Schedule type: {schedule_label}, CFG scale: {req.guidance:g}, "
        f"Seed: {seed}, Size: {req.width}x{req.height}, Model: {model}"
        for seed in req.seeds
    ]
    return {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * total,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * total,
        "seed": req.seeds[0],
        "all_seeds": list(req.seeds),
        "subseed": req.seeds[0],
        "all_subseeds": list(req.seeds),
        "subseed_strength": 0,
        "width": req.width,
        "height": req.height,
        "sampler_name": sampler,
        "scheduler": schedule_label,
        "cfg_scale": req.guidance,
        "steps": req.steps,
        "batch_size": body.batch_size,
        "n_iter": body.n_iter,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model,
        "sd_model_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": req.strength if req.init_image is not None else None,
        "extra_generation_params": {"Schedule type": schedule_label, "zitops job": record.id},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": int(record.created_at),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": "zitops",
        "job_id": record.id,
        "profile": req.profile,
    }


TXT2IMG = "/sdapi/v1/txt2img"

_TXT2IMG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A1111's TextToImageResponse: images (base64 PNG), parameters, info (a JSON string). "
                         "Header Server-Timing: the request's stages (docs/api.md).",
          "content": {"application/json": {}}},
}


def a1111_overrides(body: Txt2ImgIn, config: AgentConfig) -> tuple[str, dict[str, Any]]:
    """(prompt without its ``<lora:...>`` tags, build_request overrides) for a txt2img or img2img body."""
    refuse_unsupported(body)
    sampler, schedule = _sampler_and_schedule(body)
    limit = config.limits.max_images
    for name, value in (("batch_size", body.batch_size), ("n_iter", body.n_iter)):
        if value > limit:
            raise InvalidRequest(f"{name}: {value} is out of range; allowed 1..{limit} (limits.max_images)")
    total = body.batch_size * body.n_iter
    if total > limit:
        raise InvalidRequest(f"batch_size: batch_size x n_iter = {total} images; at most {limit} allowed")
    overrides: dict[str, Any] = {
        "negative_prompt": body.negative_prompt, "seed": body.seed, "batch": total,
        "steps": body.steps, "width": body.width, "height": body.height,
        "sampler": sampler, "schedule": schedule, "guidance": guidance_from(body.cfg_scale),
        "output_format": "png",  # A1111 returns base64 PNG
    }
    prompt, tags = strip_prompt_loras(body.prompt)
    overrides.update(lora_overrides(config, tags, "prompt"))
    return prompt, overrides


@router.post(TXT2IMG, response_class=Response,
             responses={**_TXT2IMG_RESPONSES, **ERROR_RESPONSES, **responses(409, 500, 507)})
async def txt2img(body: Txt2ImgIn, request: Request) -> Response:
    """Generate ``n_iter * batch_size`` images in one job (seeds seed, seed+1, ...), synchronously.

    ``<lora:NAME:WEIGHT>`` tags in the prompt pick LoRAs (GET /sdapi/v1/loras) and are removed from it;
    ``alwayson_scripts.controlnet.args`` takes one sd-webui-controlnet unit (docs/features.md).
    """
    config = context(request).config
    prompt, overrides = a1111_overrides(body, config)
    overrides.update(await control_overrides(config, a1111_control(body.alwayson_scripts), request))
    return await a1111_run(body, request, prompt, overrides, TXT2IMG)


async def a1111_run(body: Txt2ImgIn, request: Request, prompt: str, overrides: dict[str, Any],
                    route: str) -> Response:
    """Build, submit and wait for an A1111 job; answer in A1111's response shape."""
    started = request_started(request)
    ctx = context(request)
    req = build_request_as(_A1111_NAMES, ctx.config, prompt, **overrides)
    record = await submit(request, req)
    with inline_delivery(ctx.service, record, body.send_images and not body.save_images):
        record = await wait_final(ctx.service, record, sync_timeout_s(ctx.config), request)
        return await _answer(ctx, body, record, route, started)


async def _answer(ctx: ApiContext, body: Txt2ImgIn, record: JobRecord, route: str, started: float) -> Response:
    """A1111's response for a finished job: its images (send_images), parameters and info."""
    respond_from = time.monotonic()
    rest = {"parameters": body.model_dump(mode="json"),
            "info": json.dumps(_info(body, record, model_title(ctx.config.model)))}
    if body.send_images:
        payload = await images_json(ctx.service, record, "images", lambda b64: [b'"', b64, b'"'], rest)
    else:
        drop_encoded(ctx.service, record)
        payload = json_fragments("images", [], rest)
    if not body.save_images:  # A1111's own meaning: keep files on disk only when asked
        discard_files(ctx.service, record)
    return timed_json(ctx, route, record, payload, started, respond_from)


@router.get("/sdapi/v1/samplers")
async def samplers() -> list[dict[str, Any]]:
    """Samplers by A1111 display name, with their zitops aliases."""
    return [{"name": s["name"], "aliases": list(s["aliases"]), "options": dict(s["options"])} for s in SAMPLER_INFO]


@router.get("/sdapi/v1/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    """Sigma schedules, shaped like A1111's list (plus Automatic)."""
    out: list[dict[str, Any]] = [{"name": "automatic", "label": "Automatic", "aliases": [],
                                  "default_rho": -1, "need_inner_model": False}]
    for s in SCHEDULE_INFO:
        out.append({"name": s["name"], "label": s["label"], "aliases": [a for a in s["aliases"] if a != "automatic"],
                    "default_rho": -1, "need_inner_model": False})
    return out


@router.get("/sdapi/v1/sd-models")
async def sd_models(request: Request) -> list[dict[str, Any]]:
    """The one model this agent serves; its path on the host only for an admin."""
    model = context(request).config.model
    title = model_title(model)
    filename = model if caller(request).admin or "/" not in model else model.rstrip("/").rsplit("/", 1)[-1]
    return [{"title": title, "model_name": title, "hash": None, "sha256": None, "filename": filename,
             "config": None}]


@router.get("/sdapi/v1/options")
async def options(request: Request) -> dict[str, Any]:
    """A minimal options object: the model and the profile's defaults."""
    ctx = context(request)
    models = await sd_models(request)
    g = ctx.config.profile.generation
    return {"sd_model_checkpoint": models[0]["title"], "samples_format": "png",
            "zitops_profile": ctx.config.profile.name, "zitops_default_size": f"{g.width}x{g.height}",
            "zitops_default_steps": g.steps}


@router.get("/sdapi/v1/scripts")
async def scripts() -> dict[str, list[str]]:
    """No scripts: clients probe this to decide which extensions to drive."""
    return {"txt2img": [], "img2img": []}
