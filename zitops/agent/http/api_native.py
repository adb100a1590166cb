"""The native asynchronous jobs API: submit, poll, fetch images, cancel."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from zitops.agent.cost import estimate
from zitops.agent.dispatch.webhooks import resolve_target
from zitops.agent.http.api_common import (
    build_request,
    context,
    image_bytes,
    job_for,
    media_type,
    submit,
)
from zitops.agent.http.api_control import ControlIn, control_overrides
from zitops.agent.http.api_inputs import LoraIn, image_overrides, lora_overrides, sized
from zitops.agent.http.http_errors import EDGE_CODES, responses
from zitops.agent.http.image_input import from_base64
from zitops.agent.http.json_guard import (
    IMAGES_CAP,
    PROMPT_CAP,
    PROMPT_PATTERN,
    SEED_CAP,
    SIDE_CAP,
    STEPS_CAP,
    TEXT_PATTERN,
    Body,
    Num,
)
from zitops.errors import InvalidRequest
from zitops.profile import SAMPLERS, SCHEDULES

router = APIRouter(tags=["jobs"], responses=responses(*EDGE_CODES, 422))

JobId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class JobIn(Body):
    """A job: a prompt plus any profile default to override."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str = Field(min_length=1, max_length=PROMPT_CAP, pattern=PROMPT_PATTERN,
                        description="What to draw (not blank, no NUL, at most limits.max_prompt_chars). "
                                    "The profile's prompt template wraps it.")
    negative_prompt: str | None = Field(None, max_length=PROMPT_CAP, pattern=TEXT_PATTERN)
    width: int | None = Field(None, ge=16, le=SIDE_CAP, multiple_of=16,
                              description="Multiple of 16, within limits.min_side..max_side.")
    height: int | None = Field(None, ge=16, le=SIDE_CAP, multiple_of=16,
                               description="Multiple of 16, within limits.min_side..max_side.")
    steps: int | None = Field(None, ge=1, le=STEPS_CAP, description="1..limits.max_steps.")
    sampler: Literal[SAMPLERS] | None = None  # type: ignore[valid-type]
    schedule: Literal[SCHEDULES] | None = None  # type: ignore[valid-type]
    guidance: Num | None = Field(None, ge=0, le=20, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-1, le=SEED_CAP,
                             description="-1 or absent: random. Image i uses seed + i (each at most 2^32 - 1).")
    batch: int | None = Field(None, ge=1, le=IMAGES_CAP, validation_alias=AliasChoices("batch", "n"),
                              description="Number of images, 1..limits.max_images (alias: n).")
    output_format: Literal["png", "jpeg", "webp"] | None = None
    init_image: str | None = Field(None, min_length=1, description="img2img: a base64 PNG, JPEG or WebP image "
                                                     "(limits.max_image_body_bytes, limits.max_image_pixels).")
    mask: str | None = Field(None, min_length=1, description="Inpaint (with init_image): base64 mask, white repaints.")
    strength: Num | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                                 description="img2img/inpaint: how much to change, 0..1 (default 0.75).")
    mask_blur: int | None = Field(None, ge=0, le=64)
    loras: list[LoraIn] = Field(default_factory=list, max_length=8,
                                description="LoRAs from the LoRA directory (GET /sdapi/v1/loras), with weights.")
    control: ControlIn | None = Field(None, description="ControlNet (text-to-image only; needs a deployed "
                                                        "ControlNet, docs/features.md).")
    priority: int | None = Field(None, ge=0, le=2, description="0 low, 1 normal, 2 high; default: the token's "
                                 "(tokens file); only admin tokens may raise it (docs/api.md \"Priorities\").")
    max_queue_s: int | None = Field(None, ge=1, le=86_400, description="Fail the job if it is still queued "
                                    "this many seconds after it was accepted.")
    webhook: str | None = Field(None, min_length=8, max_length=2048,
                                description="https URL POSTed (Standard Webhooks, signed) when the job ends; its "
                                            "host must be in webhooks.allowed_hosts (docs/api.md \"Webhooks\").")


class JobAccepted(BaseModel):
    """The answer to a submission."""

    id: str
    status: str
    url: str
    estimate_s: int
    """The job's own run time by the cost check (its queue wait comes on top)."""
    estimate_basis: str
    """Where the cost check's rate comes from: the profile's GPU calibration, or this CPU's measured pace."""


JOBS = "/v1/jobs"
"""Its bodies may carry images (init_image, mask, a control image): the edge gives it limits.max_image_body_bytes."""


@router.post(JOBS, status_code=202, response_model=JobAccepted,
             responses=responses(400, 408, 413, 429, 503, 507))
async def submit_job(body: JobIn, request: Request, response: Response) -> dict[str, Any]:
    """Queue a job; 202 with its id, 429/503 with Retry-After when the queue (or this token's share) is full."""
    ctx = context(request)
    overrides = body.model_dump(exclude={"prompt", "init_image", "mask", "loras", "control", "webhook", "priority",
                                         "max_queue_s"},
                                exclude_none=True)
    overrides.update(lora_overrides(ctx.config, [(lo.name, lo.weight) for lo in body.loras]))
    if body.mask is not None and body.init_image is None:
        raise InvalidRequest("mask: needs an input image (init_image) to inpaint")
    if body.init_image is not None:
        init = from_base64("init_image", body.init_image)
        mask = from_base64("mask", body.mask) if body.mask is not None else None
        overrides = sized({**overrides, **await image_overrides(ctx.config, init, mask, request=request)})
    if body.control is not None:
        if body.init_image is not None:
            raise InvalidRequest("control: ControlNet works on text-to-image only; send no init_image with it")
        overrides.update(await control_overrides(ctx.config, body.control.ask(), request))
    req = build_request(ctx.config, body.prompt, **overrides)
    if body.webhook is not None:  # checked and resolved once, before the job is stored with it
        req = replace(req, extra={**req.extra, "webhook": await resolve_target(ctx.config.webhooks, body.webhook)})
    record = await submit(request, req, body.priority, body.max_queue_s)
    url = f"/v1/jobs/{record.id}"
    response.headers["Location"] = url
    seconds, basis = estimate(ctx.config, ctx.service, req)
    return {"id": record.id, "status": record.status.value, "url": url, "estimate_s": seconds,
            "estimate_basis": basis}


@router.get("/v1/jobs/{job_id}", responses=responses(404))
async def get_job(job_id: JobId, request: Request) -> dict[str, Any]:
    """A job's status (queued, running, succeeded, failed, cancelled), error, image links and stage timings."""
    record = job_for(request, job_id)
    timings = record.info.get("timings") if isinstance(record.info, dict) else None
    links = context(request).service.image_links(record) if record.images else None
    return {**record.public(), "timings": timings if isinstance(timings, dict) else None,
            **({"images": links} if links is not None else {})}


@router.get("/v1/jobs/{job_id}/images/{index}", name="native_image",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
                       **responses(404)})
async def get_image(job_id: JobId, index: Annotated[int, Path(ge=0, le=IMAGES_CAP - 1)],
                    request: Request) -> Response:
    """The bytes of image ``index``; 404 with a reason until the job has succeeded. Any job of the fleet."""
    service = context(request).service
    name, data = await asyncio.to_thread(image_bytes, service, job_for(request, job_id), index)
    # The name is the server's own (job id, index, format suffix), never the client's.
    return Response(data, media_type=media_type(name),
                    headers={"Content-Disposition": f'inline; filename="{job_id}-{index}{PurePath(name).suffix}"'})


@router.delete("/v1/jobs/{job_id}", responses=responses(404, 409))
async def cancel_job(job_id: JobId, request: Request) -> dict[str, Any]:
    """Cancel a queued job, or stop a running one after its current step (the answer waits for that);
    409 when it is final."""
    job_for(request, job_id)
    record = await context(request).service.cancel(job_id)
    return record.public()
