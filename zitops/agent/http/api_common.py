"""What the three API routers share: the app's context and the job plumbing.

Building a request always goes through the profile's defaults and the
configured limits, so the native, OpenAI and A1111 routes enforce the same
rules with the same messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import Request, Response

from zitops.agent.contract import JobRecord, JobStatus, Service
from zitops.agent.cost import check_cost
from zitops.agent.http.http_metrics import (  # noqa: F401 (re-exported: the routes import them from here)
    STARTED_KEY,
    TIMING_STAGES,
    HttpMetrics,
    SplicedResponse,
    job_marks,
    request_started,
    server_timing,
    stage_timings,
)
from zitops.agent.http.json_guard import text_problem
from zitops.agent.http.queue_terms import may_retry, queue_terms, submit_once
from zitops.agent.http.tenants import caller, token_cap, visible
from zitops.config import AgentConfig
from zitops.engine.features.parallel import check_request as check_parallel
from zitops.engine.request import (
    MAX_SEED,
    GenerationRequest,
    request_from_profile,
    validate_request,
)
from zitops.errors import (
    AgentUnavailable,
    Conflict,
    DiskFull,
    EngineError,
    InvalidRequest,
    NotFound,
    OutOfMemory,
    ZitopsError,
)
from zitops.worker.protocol import STEER_CANCEL

b64encode: Callable[[bytes], bytes]
try:  # SIMD base64 (the [fast] extra): 3 MB in ~2.5 ms on the dev box's CPU against ~6-7 ms; the same bytes
    from pybase64 import b64encode
except ImportError:
    from base64 import b64encode

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class ApiContext:
    """Everything a route needs, stored once on ``app.state.zitops``."""

    config: AgentConfig
    service: Service
    tokens: frozenset[str]
    metrics: HttpMetrics
    started_at: float
    admin_tokens: frozenset[str] = frozenset()
    priorities: dict[str, int] = field(default_factory=dict)  # token's SHA-256 -> its jobs' default priority


def context(request: Request) -> ApiContext:
    """The ApiContext of the app serving ``request``."""
    ctx: ApiContext = request.app.state.zitops
    return ctx


def build_request(config: AgentConfig, prompt: str, **overrides: Any) -> GenerationRequest:
    """Profile defaults + overrides, checked against ``config.limits``; raises InvalidRequest (the cost: submit)."""
    limits = config.limits
    for name, value in (("prompt", prompt), ("negative_prompt", overrides.get("negative_prompt"))):
        problem = text_problem(value)
        if problem:
            raise InvalidRequest(f"{name}: {problem}")
    negative = overrides.get("negative_prompt")
    if isinstance(negative, str) and len(negative) > limits.max_prompt_chars:
        raise InvalidRequest(
            f"negative_prompt: {len(negative)} characters, at most {limits.max_prompt_chars} allowed"
        )
    if len(prompt) > limits.max_prompt_chars:
        # Checked before templating too, so the message counts what the client sent.
        raise InvalidRequest(f"prompt: {len(prompt)} characters, at most {limits.max_prompt_chars} allowed")
    seed = overrides.get("seed")
    top_seed = MAX_SEED - (limits.max_images - 1)  # image i uses seed + i, each within 32 bits
    if isinstance(seed, int) and not -1 <= seed <= top_seed:
        raise InvalidRequest(f"seed: {seed} is out of range; allowed -1 (random) or 0..{top_seed}")
    batch = overrides.get("batch")
    if batch is not None and not 1 <= batch <= limits.max_images:
        raise InvalidRequest(f"batch: {batch} images is out of range; allowed 1..{limits.max_images}")
    req = request_from_profile(config.profile, prompt, **overrides)
    # The client's prompt was measured above; the profile's template text is
    # the operator's and must not eat into the client's allowance.
    templated_limit = limits.max_prompt_chars + len(config.profile.generation.prompt_template)
    req = validate_request(
        req, max_side=limits.max_side, min_side=limits.min_side, max_steps=limits.max_steps,
        max_images=limits.max_images, max_prompt_chars=templated_limit,
    )
    check_parallel(config.profile.engine.parallel, req)  # what a context-parallel group cannot split: a 422
    return req


def build_request_as(names: dict[str, str], config: AgentConfig, prompt: str,
                     **overrides: Any) -> GenerationRequest:
    """build_request, with error messages naming the client's field (``{"batch": "n"}``)."""
    try:
        return build_request(config, prompt, **overrides)
    except InvalidRequest as exc:
        field, sep, rest = str(exc).partition(":")
        if sep and field in names:
            raise InvalidRequest(f"{names[field]}:{rest}") from None
        raise


async def submit(request: Request, req: GenerationRequest, priority: int | None = None,
                 max_queue_s: int | None = None) -> JobRecord:
    """Queue ``req`` for the calling token, within its budget and share of the queue, at its priority and deadline;
    once per Idempotency-Key."""
    ctx = context(request)
    who = caller(request)
    req = replace(req, extra={**req.extra, **queue_terms(request, priority, max_queue_s)})
    q = ctx.config.profile.queue
    cap = token_cap(q.depth, q.per_token_share, len(ctx.tokens)) if who.owner is not None else None
    # the budget, at the rate this agent's workers run at; checked for a new job, not for a keyed retry
    return await submit_once(request, ctx.service, req, who.owner, cap, lambda: check_cost(ctx.config, ctx.service, req))


def job_for(request: Request, job_id: str) -> JobRecord:
    """The job ``job_id`` if the caller may see it; NotFound otherwise (also for another token's job)."""
    return visible(caller(request), context(request).service.get(job_id))


def sync_timeout_s(config: AgentConfig) -> float:
    """How long a synchronous route waits for its job: a full queue ahead of it, each at its timeout."""
    q = config.profile.queue
    return q.job_timeout_s * (q.depth + 1)


class ClientGone(ZitopsError):
    """The client of a synchronous request hung up before its job ended."""

    http_status = 499


DISCONNECT_CHECK_S = 1.0


async def wait_final(service: Service, record: JobRecord, timeout_s: float,
                     request: Request | None = None) -> JobRecord:
    """Wait for a job to end; raise the error a synchronous client should see if it did not succeed.

    With ``request``, a client that hangs up while its job is still queued
    gets the job cancelled, so abandoned work never reaches a GPU.
    """
    deadline = time.monotonic() + timeout_s
    while not record.status.final:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentUnavailable(
                f"job {record.id} is still {record.status.value} after {math.ceil(timeout_s)} s; "
                f"poll GET /v1/jobs/{record.id}"
            )
        step = min(remaining, DISCONNECT_CHECK_S if request is not None else 30.0)
        record = await service.wait(record.id, step)
        if request is not None and not record.status.final and await request.is_disconnected():
            abandon(context(request), record.id)
            raise ClientGone(f"job {record.id}: the client disconnected while it was {record.status.value}")
    if record.status is JobStatus.FAILED:
        error = record.error or "unknown error"
        if "out of memory" in error.lower() or "outofmemory" in error.lower():
            raise OutOfMemory(f"job {record.id} failed: {error}")
        if "no space left on device" in error.lower():
            raise DiskFull(f"job {record.id} failed: {error}")
        raise EngineError(f"job {record.id} failed: {error}")
    if record.status is JobStatus.CANCELLED:
        raise Conflict(f"job {record.id} was cancelled before it ran")
    return record


_CANCELS: set[asyncio.Task[Any]] = set()
"""Cancels of abandoned queued jobs in flight (a reference, so the loop does not drop them)."""


def abandon(ctx: ApiContext, job_id: str) -> None:
    """A synchronous request's client hung up: cancel its job, counted (queued: at once; running: at its next
    step, and the worker moves on). Never raises: the client is gone, nobody hears an error."""
    try:
        record = ctx.service.get(job_id)
    except ZitopsError:
        return
    if record.status.final:
        return
    ctx.metrics.client_gone.labels(record.status.value).inc()
    if record.status is JobStatus.RUNNING:
        ctx.service.steer(job_id, STEER_CANCEL)
        return

    async def cancel() -> None:
        with contextlib.suppress(ZitopsError):
            await ctx.service.cancel(job_id)

    task = asyncio.get_running_loop().create_task(cancel(), name=f"zitops-abandon-{job_id}")
    _CANCELS.add(task)
    task.add_done_callback(_CANCELS.discard)


def image_bytes(service: Service, record: JobRecord, index: int) -> tuple[str, bytes]:
    """(file name, bytes) of image ``index`` of a succeeded job; NotFound with a clear reason otherwise.

    Blocking (a file or the fleet's store): call it off the event loop.
    """
    if record.status is not JobStatus.SUCCEEDED:
        raise NotFound(
            f"job {record.id} is {record.status.value}; its images exist once it has succeeded"
        )
    if not 0 <= index < len(record.images):
        raise NotFound(f"image {index}: job {record.id} has images 0..{len(record.images) - 1}")
    try:
        return service.image(record.id, index)
    except NotFound:
        raise NotFound(f"image {index} of job {record.id} has expired (results are kept for a limited time)"
                       ) from None


def media_type(name: str) -> str:
    """Content type from the file name's suffix (the server chose the name)."""
    return MEDIA_TYPES.get(Path(name).suffix.lower().lstrip("."), "application/octet-stream")


def images_now(service: Service, record: JobRecord) -> list[bytes]:
    """A succeeded job's encoded images: in memory if the dispatcher still has them, else read (blocking)."""
    blobs = encoded_now(service, record)
    return blobs if blobs is not None else read_images(service, record)


def read_images(service: Service, record: JobRecord) -> list[bytes]:
    """Every image of a succeeded job, read from its files or the fleet's store (blocking)."""
    return [image_bytes(service, record, i)[1] for i in range(len(record.images))]


def encoded_now(service: Service, record: JobRecord) -> list[bytes] | None:
    """A waited-for job's encoded bytes, handed over once by the dispatcher (on the event loop); None: read them.

    So a response never reads back the file just written, nor one never
    written (:func:`inline_delivery`); any other Service, or an evicted entry, falls back to the files.
    """
    fresh: Callable[[str], tuple[bytes, ...] | None] | None = getattr(service, "encoded_images", None)
    blobs = fresh(record.id) if fresh is not None else None
    return list(blobs) if blobs is not None and len(blobs) == len(record.images) else None


@contextlib.contextmanager
def inline_delivery(service: Service, record: JobRecord, carried: bool) -> Iterator[None]:
    """While a synchronous route waits and answers: its job's images are encoded but never written.

    For a response that carries the images (``carried``) of a job nobody may
    ask for again (no Idempotency-Key), whose files :func:`discard_files`
    would delete right after. Leaving the block (answered, timed out, the
    client gone) ends it; a job still running then writes its files as any other.
    """
    deliver: Callable[[str], None] | None = getattr(service, "deliver_inline", None)
    release: Callable[[str], None] | None = getattr(service, "release_inline", None)
    if deliver is None or release is None or not carried or may_retry(record):
        yield
        return
    deliver(record.id)
    try:
        yield
    finally:
        release(record.id)


Fragments = Callable[[bytes], list[bytes]]
"""One list item's JSON as fragments around an image's base64 (e.g. ``[b'"', b64, b'"']``)."""


def discard_files(service: Service, record: JobRecord) -> None:
    """Delete a synchronous job's image files: its response carries them (unless a keyed retry may ask again)."""
    discard: Callable[[tuple[str, ...]], None] | None = getattr(service, "discard_images", None)
    if discard is not None and not may_retry(record):
        with contextlib.suppress(ZitopsError, OSError):  # best effort: retention deletes them later anyway
            discard(record.images)


def drop_encoded(service: Service, record: JobRecord) -> None:
    """Free a job's in-memory images when the response does not carry them (url, send_images false)."""
    fresh: Callable[[str], tuple[bytes, ...] | None] | None = getattr(service, "encoded_images", None)
    if fresh is not None:
        fresh(record.id)


async def images_json(service: Service, record: JobRecord, key: str, item: Fragments,
                      rest: dict[str, Any]) -> list[bytes]:
    """``{key: [item(base64 of each image)...], **rest}`` as JSON fragments, built off the event loop.

    base64 is JSON-safe as it is, so the large strings are written once, into
    the body, and never escaped, validated or re-encoded by a JSON encoder;
    the fragments are sent as they are (http_metrics.SplicedResponse), never joined.
    """
    ready = encoded_now(service, record)

    def build() -> list[bytes]:
        blobs = ready if ready is not None else read_images(service, record)
        return json_fragments(key, [item(b64encode(blob)) for blob in blobs], rest)

    return await asyncio.to_thread(build)


def json_splice(key: str, items: list[list[bytes]], rest: dict[str, Any]) -> bytes:
    """``{"key": [items...], **rest}`` as JSON bytes (json_fragments, joined)."""
    return b"".join(json_fragments(key, items, rest))


def json_fragments(key: str, items: list[list[bytes]], rest: dict[str, Any]) -> list[bytes]:
    """``{"key": [items...], **rest}`` as JSON fragments in order; each item's fragments kept as they are."""
    parts = [b"{", json.dumps(key).encode(), b":["]
    for n, fragments in enumerate(items):
        if n:
            parts.append(b",")
        parts += fragments
    tail = json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    parts += [b"],", tail[1:]] if rest else [b"]}"]
    return parts


def timed_json(ctx: ApiContext, route: str, record: JobRecord, body: bytes | list[bytes], started: float,
               respond_from: float) -> Response:
    """The JSON response of a synchronous route, with its Server-Timing header and stage metrics."""
    stages = stage_timings(record, started, respond_from, job_marks(ctx.service, record))
    ctx.metrics.observe_stages(route, stages)
    return SplicedResponse([body] if isinstance(body, bytes) else body, {"Server-Timing": server_timing(stages)})


def base_url(request: Request) -> str:
    """Absolute base URL the client used, for links in responses."""
    return str(request.base_url).rstrip("/")

