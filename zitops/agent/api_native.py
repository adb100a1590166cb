"""The native asynchronous jobs API: submit, poll, fetch images, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from zitops.agent.api_common import build_request, context, image_file, media_type
from zitops.agent.http_errors import ERROR_RESPONSES
from zitops.engine.request import OUTPUT_FORMATS

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

JobId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class JobIn(BaseModel):
    """A job: a prompt plus any profile default to override."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str = Field(description="What to draw. The profile's prompt template wraps it.")
    negative_prompt: str | None = None
    width: int | None = Field(None, description="Multiple of 16, within limits.min_side..max_side.")
    height: int | None = Field(None, description="Multiple of 16, within limits.min_side..max_side.")
    steps: int | None = None
    sampler: str | None = None
    schedule: str | None = None
    guidance: float | None = None
    seed: int | None = Field(None, ge=-1, description="-1 or absent: random. Image i uses seed + i.")
    batch: int | None = Field(None, validation_alias=AliasChoices("batch", "n"),
                              description="Number of images (alias: n).")
    output_format: str | None = Field(None, description=f"One of {', '.join(OUTPUT_FORMATS)}.")


class JobAccepted(BaseModel):
    """The answer to a submission."""

    id: str
    status: str
    url: str


@router.post("/v1/jobs", status_code=202, response_model=JobAccepted)
async def submit_job(body: JobIn, request: Request, response: Response) -> dict[str, Any]:
    """Queue a job; 202 with its id, 429/503 with Retry-After when the queue is full."""
    ctx = context(request)
    overrides = body.model_dump(exclude={"prompt"}, exclude_none=True)
    req = build_request(ctx.config, body.prompt, **overrides)
    record = await ctx.service.submit(req)
    url = f"/v1/jobs/{record.id}"
    response.headers["Location"] = url
    return {"id": record.id, "status": record.status.value, "url": url}


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: JobId, request: Request) -> dict[str, Any]:
    """A job's status (queued, running, succeeded, failed, cancelled), error, image links and stage timings."""
    record = context(request).service.get(job_id)
    timings = record.info.get("timings") if isinstance(record.info, dict) else None
    return {**record.public(), "timings": timings if isinstance(timings, dict) else None}


@router.get("/v1/jobs/{job_id}/images/{index}", name="native_image",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}})
async def get_image(job_id: JobId, index: Annotated[int, Path(ge=0, le=10_000)], request: Request) -> FileResponse:
    """The bytes of image ``index``; 404 with a reason until the job has succeeded."""
    service = context(request).service
    path = image_file(service, service.get(job_id), index)
    return FileResponse(path, media_type=media_type(path),
                        filename=f"{job_id}-{index}{path.suffix}", content_disposition_type="inline")


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(job_id: JobId, request: Request) -> dict[str, Any]:
    """Cancel a queued job; 409 when it is already running or final."""
    record = await context(request).service.cancel(job_id)
    return record.public()
