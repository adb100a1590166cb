"""The native asynchronous jobs API: submit, poll, fetch images, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from zitops.agent.api_common import (
    IMAGES_CAP,
    PROMPT_CAP,
    PROMPT_PATTERN,
    SEED_CAP,
    SIDE_CAP,
    STEPS_CAP,
    TEXT_PATTERN,
    Body,
    Num,
    build_request,
    context,
    image_file,
    job_for,
    media_type,
    submit,
)
from zitops.agent.http_errors import EDGE_CODES, responses
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


class JobAccepted(BaseModel):
    """The answer to a submission."""

    id: str
    status: str
    url: str


@router.post("/v1/jobs", status_code=202, response_model=JobAccepted,
             responses=responses(400, 408, 413, 429, 503, 507))
async def submit_job(body: JobIn, request: Request, response: Response) -> dict[str, Any]:
    """Queue a job; 202 with its id, 429/503 with Retry-After when the queue (or this token's share) is full."""
    ctx = context(request)
    overrides = body.model_dump(exclude={"prompt"}, exclude_none=True)
    req = build_request(ctx.config, body.prompt, **overrides)
    record = await submit(request, req)
    url = f"/v1/jobs/{record.id}"
    response.headers["Location"] = url
    return {"id": record.id, "status": record.status.value, "url": url}


@router.get("/v1/jobs/{job_id}", responses=responses(404))
async def get_job(job_id: JobId, request: Request) -> dict[str, Any]:
    """A job's status (queued, running, succeeded, failed, cancelled), error, image links and stage timings."""
    record = job_for(request, job_id)
    timings = record.info.get("timings") if isinstance(record.info, dict) else None
    return {**record.public(), "timings": timings if isinstance(timings, dict) else None}


@router.get("/v1/jobs/{job_id}/images/{index}", name="native_image",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
                       **responses(404)})
async def get_image(job_id: JobId, index: Annotated[int, Path(ge=0, le=IMAGES_CAP - 1)],
                    request: Request) -> FileResponse:
    """The bytes of image ``index``; 404 with a reason until the job has succeeded."""
    service = context(request).service
    path = image_file(service, job_for(request, job_id), index)
    return FileResponse(path, media_type=media_type(path),
                        filename=f"{job_id}-{index}{path.suffix}", content_disposition_type="inline")


@router.delete("/v1/jobs/{job_id}", responses=responses(404, 409))
async def cancel_job(job_id: JobId, request: Request) -> dict[str, Any]:
    """Cancel a queued job; 409 when it is already running or final."""
    job_for(request, job_id)
    record = await context(request).service.cancel(job_id)
    return record.public()
