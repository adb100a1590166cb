"""Progress, previews, interrupt and streams: A1111's progress routes, native job events, OpenAI streaming.

All read the dispatcher's :class:`~zitops.agent.progress.ProgressBoard`.
Previews are decoded by the worker only when a client asks: an A1111
progress poll without ``skip_current_image``, ``?preview=true`` on the
events stream, or OpenAI's ``partial_images``. Streams are Server-Sent
Events; each ends with the job's outcome.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from zitops.agent.contract import JobRecord, JobStatus, Service
from zitops.agent.http.api_common import context, images_now, job_for
from zitops.agent.http.api_native import JobId
from zitops.agent.http.http_errors import EDGE_CODES, responses
from zitops.agent.http.tenants import caller
from zitops.agent.progress import JobProgress
from zitops.engine.features.lora_files import list_loras
from zitops.worker.protocol import STEER_INTERRUPT, STEER_PREVIEW

router = APIRouter(responses=responses(*EDGE_CODES, 422))

KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _mine(request: Request) -> list[JobProgress]:
    who = caller(request)
    return context(request).service.progress.running(who.owner, any_owner=who.admin)


def want_previews(service: Service, job_id: str) -> None:
    """Ask the worker running ``job_id`` for previews (once; a queued job gets them when it starts)."""
    if service.progress.ask_preview(job_id):
        service.steer(job_id, STEER_PREVIEW)


# --- A1111 ------------------------------------------------------------------------


@router.get("/sdapi/v1/progress", tags=["a1111"])
async def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    """The caller's running job: progress 0..1, eta_relative, state, and a preview unless skipped."""
    running = _mine(request)
    job = running[0] if running else None
    image = None
    if job is not None and not skip_current_image:
        want_previews(context(request).service, job.job_id)
        image = base64.b64encode(job.preview).decode("ascii") if job.preview else None
    eta = job.eta_s() if job is not None else None
    return {
        "progress": round(job.fraction, 4) if job else 0.0,
        "eta_relative": round(eta, 3) if eta is not None else 0.0,
        "state": {"skipped": False, "interrupted": False, "stopping_generation": False,
                  "job": job.job_id if job else "", "job_count": len(running),
                  "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.queued_at)) if job else "0",
                  "job_no": 0, "sampling_step": job.step if job else 0, "sampling_steps": job.steps if job else 0},
        "current_image": image,
        "textinfo": None,
        "current_task": job.job_id if job else None,
    }


def _interrupt(request: Request) -> dict[str, Any]:
    service = context(request).service
    stopped = [job.job_id for job in _mine(request) if service.steer(job.job_id, STEER_INTERRUPT)]
    return {"interrupted": stopped}


@router.post("/sdapi/v1/interrupt", tags=["a1111"])
async def interrupt(request: Request) -> dict[str, Any]:
    """Stop the caller's running jobs after their current step; they return the image as it is then."""
    return _interrupt(request)


@router.post("/sdapi/v1/skip", tags=["a1111"])
async def skip(request: Request) -> dict[str, Any]:
    """As interrupt: a zitops job is one pipeline call, so there is no next image of it to go on to."""
    return _interrupt(request)


@router.get("/sdapi/v1/loras", tags=["a1111"])
async def loras(request: Request) -> list[dict[str, Any]]:
    """The LoRAs in the deployment's LoRA directory, as A1111's Lora extension lists them."""
    found = await asyncio.to_thread(list_loras, context(request).config.lora_dir)
    return [{"name": name, "alias": name, "path": path.name, "metadata": {}} for name, path in found.items()]


# --- native events ------------------------------------------------------------------


def _event_data(event: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in event.items() if k not in ("event", "preview")}
    if event.get("preview") is not None:
        data["preview"] = base64.b64encode(event["preview"]).decode("ascii")
    return data


async def job_events(service: Service, job_id: str, *, previews: bool) -> AsyncIterator[dict[str, Any]]:
    """The job's events from its current state to its outcome (the final event's job record included)."""
    feed = service.progress.subscribe(job_id)
    try:
        record = service.get(job_id)
        if previews:
            want_previews(service, job_id)
        current = service.progress.get(job_id)
        if record.status.final:
            yield _final(record)
            return
        if current is not None:
            yield current.event("started" if current.state == "running" else "queued")
        while True:
            try:
                event = await asyncio.wait_for(feed.get(), KEEPALIVE_S)
            except TimeoutError:
                yield {"event": "keepalive"}
                continue
            if event["event"] in ("done", "failed", "cancelled"):
                yield _final(service.get(job_id))
                return
            yield event
    finally:
        service.progress.unsubscribe(job_id, feed)


def _final(record: JobRecord) -> dict[str, Any]:
    kind = {JobStatus.SUCCEEDED: "done", JobStatus.FAILED: "failed"}.get(record.status, "cancelled")
    out: dict[str, Any] = {"event": kind, "job_id": record.id, "status": record.status.value}
    if record.status is JobStatus.SUCCEEDED:
        out["images"] = [f"/v1/jobs/{record.id}/images/{i}" for i in range(len(record.images))]
        stopped = record.info.get("interrupted_at_step") if isinstance(record.info, dict) else None
        if stopped is not None:
            out["interrupted_at_step"] = stopped
    if record.error:
        out["error"] = record.error
    return out


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, **responses(404)})
async def events(job_id: JobId, request: Request,
                 preview: Annotated[bool, Query(description="Send a small preview PNG with each step.")] = False,
                 ) -> StreamingResponse:
    """Server-Sent Events: queued, started, step (k of n, with ``preview``), then done, failed or cancelled."""
    job_for(request, job_id)  # 404 for an unknown job or another token's
    service = context(request).service

    async def stream() -> AsyncIterator[bytes]:
        async for event in job_events(service, job_id, previews=preview):
            if event["event"] == "keepalive":
                yield b": keepalive\n\n"
            else:
                yield sse(event["event"], _event_data(event))

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


# --- OpenAI streaming ---------------------------------------------------------------------


def partial_steps(steps: int, partial_images: int) -> tuple[int, ...]:
    """The steps whose previews become OpenAI's partial images: evenly spread, never the last step."""
    if partial_images <= 0 or steps <= 1:
        return ()
    picks = {max(1, min(steps - 1, round(steps * (i + 1) / (partial_images + 1)))) for i in range(partial_images)}
    return tuple(sorted(picks))


def openai_stream(service: Service, record: JobRecord, *, prefix: str, quality: str,
                  background: str) -> StreamingResponse:
    """OpenAI's image stream: ``<prefix>.partial_image`` events from previews, then ``<prefix>.completed`` per image."""
    req = record.request
    base = {"background": background, "output_format": req.output_format, "quality": quality,
            "size": f"{req.width}x{req.height}"}

    async def stream() -> AsyncIterator[bytes]:
        index = 0
        async for event in job_events(service, record.id, previews=False):
            kind = event["event"]
            if kind == "step" and event.get("preview") is not None:
                yield sse(f"{prefix}.partial_image", {
                    "type": f"{prefix}.partial_image", "b64_json": base64.b64encode(event["preview"]).decode(),
                    "created_at": int(time.time()), "partial_image_index": index, **base})
                index += 1
            elif kind in ("failed", "cancelled"):
                yield sse("error", {"type": "error", "error": {
                    "message": f"job {record.id} {kind}: {event.get('error') or kind}", "type": "server_error"}})
                return
            elif kind == "done":
                blobs = await asyncio.to_thread(images_now, service, service.get(record.id))
                for blob in blobs:
                    yield sse(f"{prefix}.completed", {
                        "type": f"{prefix}.completed", "b64_json": base64.b64encode(blob).decode(),
                        "created_at": int(time.time()), **base,
                        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                  "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}})
                return

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
