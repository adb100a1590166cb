"""The agent's FastAPI application: routers, ops endpoints, edge middleware.

``create_app`` is pure: it builds the app around a :class:`Service` and never
touches workers, GPUs or the network, so tests can serve it with any Service.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from zitops import __version__
from zitops.agent.contract import Service
from zitops.agent.http import (
    api_a1111,
    api_control,
    api_events,
    api_img2img,
    api_native,
    api_openai,
    console,
)
from zitops.agent.http.api_common import ApiContext, context
from zitops.agent.http.auth import LiveTokens, Tokens
from zitops.agent.http.hosts import HostPolicy
from zitops.agent.http.http_errors import (
    EDGE_CODES,
    http_exception_handler,
    responses,
    validation_error_handler,
    zitops_error_handler,
)
from zitops.agent.http.http_metrics import CONTENT_TYPE, HttpMetrics
from zitops.agent.http.json_guard import Body
from zitops.agent.http.middleware import EdgeMiddleware
from zitops.agent.http.openapi import install as install_openapi
from zitops.agent.http.tenants import caller, owner_hash, reason_codes, reduced_status
from zitops.config import AgentConfig
from zitops.errors import ConfigError, InvalidRequest, ZitopsError
from zitops.logbook.failure_query import failures_payload
from zitops.logbook.failures import FailureStore
from zitops.logbook.logs import set_levels
from zitops.tracing import NO_TRACER, Tracer

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOGGER_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$"
"""A logger name zitops.logbook.logs accepts ("root" is the root logger)."""

ops = APIRouter(tags=["ops"])

SINCE_PATTERN = (r"^\d{1,10}(\.\d{1,6})?$|^\d{1,6}(\.\d{1,3})?[smhdw]$"
                 r"|^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?Z?)?$")
"""What ``since`` the schema offers: epoch seconds, a duration (30m, 2d), or a UTC date or time."""


class Readiness(BaseModel):
    """A probe's answer."""

    ready: bool
    reasons: list[str] = Field(description="Why not: coarse codes (draining, degraded, no_worker_ready, "
                                           "queue_full, heartbeat_stale, loop_stalled, not_ready); an admin "
                                           "token (or an agent without tokens) gets the full text.")


class Liveness(BaseModel):
    """/livez's answer."""

    live: bool


class Health(Readiness):
    """/healthz's answer."""

    live: bool


_PROBE_RESPONSES: dict[int | str, dict[str, Any]] = {503: {"model": Readiness, "description": "Not ready."}}


def _reasons(request: Request, reasons: list[str]) -> list[str]:
    return reasons if caller(request).admin else reason_codes(reasons)


@ops.get("/livez", response_model=Liveness, responses={503: {"model": Liveness, "description": "Not live."}})
async def livez(request: Request) -> JSONResponse:
    """The process is up: no GPU call, nothing that can wait on the queue. Open without a token."""
    alive = context(request).service.livez()
    return JSONResponse({"live": alive}, status_code=200 if alive else 503)


@ops.get("/readyz", response_model=Readiness, responses=_PROBE_RESPONSES)
async def readyz(request: Request) -> JSONResponse:
    """200 when a worker is loaded, the queue has room and heartbeats are fresh; else 503 with reasons.

    Open without a token (Kubernetes probes send none); it then tells only
    ready or not, and coarse reason codes.
    """
    ready, reasons = context(request).service.readiness()
    headers = None if ready else {"Retry-After": "5"}
    return JSONResponse({"ready": ready, "reasons": _reasons(request, reasons)},
                        status_code=200 if ready else 503, headers=headers)


@ops.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "Not healthy."},
                                                      **responses(*EDGE_CODES)})
async def healthz(request: Request) -> JSONResponse:
    """Liveness and readiness together, with reasons."""
    service = context(request).service
    live = service.livez()
    ready, reasons = service.readiness()
    ok = live and ready
    return JSONResponse({"live": live, "ready": ready, "reasons": _reasons(request, reasons)},
                        status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


@ops.get("/status", responses=responses(*EDGE_CODES))
async def status(request: Request) -> dict[str, Any]:
    """The runtime's status (workers, queue, uptime, failures, recoveries); never secrets.

    A non-admin token gets a reduced view: no job ids, prompts, paths or error text.
    """
    ctx = context(request)
    data = dict(ctx.service.status())
    data.setdefault("version", __version__)
    data.setdefault("api_uptime_s", round(time.time() - ctx.started_at, 1))
    data.setdefault("auth", "tokens" if ctx.tokens else ("proxy" if ctx.config.auth.behind_proxy else "none"))
    return data if caller(request).admin else reduced_status(data)


@ops.get("/metrics", response_class=Response,
         responses={200: {"content": {CONTENT_TYPE: {}}}, **responses(*EDGE_CODES)})
async def metrics(request: Request) -> Response:
    """Prometheus text: the HTTP layer's metrics followed by the runtime's."""
    ctx = context(request)
    runtime = ctx.service.metrics_text()
    text = ctx.metrics.render()
    if runtime:
        text += runtime if runtime.endswith("\n") else runtime + "\n"
    return Response(text, media_type=CONTENT_TYPE)


@ops.get("/v1/failures", responses=responses(*EDGE_CODES, 403, 422))
async def failures(request: Request, since: Annotated[str | None, Query(max_length=64, pattern=SINCE_PATTERN)] = None,
                   limit: Annotated[int | None, Query(ge=1, le=1000)] = None) -> dict[str, Any]:
    """Captured failures, newest first (read by ``zitops failures --url``).

    ``since``: epoch seconds, a duration (30m, 1h, 2d) or an ISO 8601 time;
    ``limit``: 1..1000, default 50.
    """
    ctx = context(request)
    store = getattr(ctx.service, "failures", None)
    if not isinstance(store, FailureStore):
        # The runtime keeps its store on the service; read the same files otherwise.
        store = FailureStore(Path(ctx.config.paths.state_dir), Path(ctx.config.paths.log_dir))
    return await asyncio.to_thread(failures_payload, store, since, limit)


class LogLevelsIn(Body):
    """New levels for named loggers; "root" is the root logger."""

    levels: dict[Annotated[str, StringConstraints(pattern=LOGGER_NAME)],
                 Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "debug", "info", "warning", "error",
                         "critical"]] = Field(description="logger name -> DEBUG|INFO|WARNING|ERROR|CRITICAL",
                                              min_length=1, max_length=100,
                                              json_schema_extra={"additionalProperties": False})


@ops.put("/admin/log-levels", responses=responses(*EDGE_CODES, 400, 403, 408, 413, 422))
async def put_log_levels(body: LogLevelsIn) -> dict[str, Any]:
    """Change logger levels at runtime; returns the effective levels."""
    if not body.levels:
        raise InvalidRequest("levels: give at least one logger, e.g. {\"zitops\": \"DEBUG\"}")
    if len(body.levels) > 100:
        raise InvalidRequest("levels: at most 100 loggers at once")
    clean: dict[str, str] = {}
    for name, level in body.levels.items():
        if not re.fullmatch(LOGGER_NAME, name):
            raise InvalidRequest("levels: a logger name is 1..200 of A-Z a-z 0-9 _ . -, not starting with a digit")
        upper = level.upper()
        if upper not in LEVELS:
            raise InvalidRequest(f"levels.{name}: {level[:20]!r} is not a level; allowed: {', '.join(LEVELS)}")
        clean[name] = upper
    try:
        effective = set_levels(clean)
    except ConfigError as exc:
        raise InvalidRequest(f"levels: {exc}") from None
    return {"levels": effective}


def image_paths(config: AgentConfig) -> frozenset[str]:
    """Routes with limits.max_image_body_bytes: img2img, edits and native jobs, and txt2img when it may carry a
    control image."""
    return api_img2img.IMAGE_PATHS | {api_native.JOBS} | ({api_a1111.TXT2IMG} if config.controlnet_dir else set())


def create_app(config: AgentConfig, service: Service, *, tokens: frozenset[str],
               admin_tokens: frozenset[str] = frozenset(), priorities: dict[str, int] | None = None,
               tracer: Tracer = NO_TRACER) -> FastAPI:
    """The agent's ASGI app around ``service``; ``tokens`` empty means no auth (everyone an admin).

    With tracing on, each request gets a span (outermost, so it covers the edge's checks too).
    """
    app = FastAPI(
        title="zitops agent",
        version=__version__,
        description="Z-Image-Turbo as a service: native async jobs, OpenAI Images and AUTOMATIC1111 compatible APIs.",
        docs_url=None,  # /docs and /redoc come from zitops.agent.http.console, on vendored assets
        redoc_url=None,
    )
    http_metrics = HttpMetrics()
    app.state.zitops = ApiContext(config=config, service=service, tokens=tokens,
                                  metrics=http_metrics, started_at=time.time(), admin_tokens=admin_tokens,
                                  priorities=owner_priorities(priorities or {}))
    app.add_exception_handler(ZitopsError, zitops_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.include_router(ops)
    app.include_router(api_native.router)
    app.include_router(api_openai.router)
    app.include_router(api_a1111.router)
    app.include_router(api_img2img.router)
    app.include_router(api_control.router)
    app.include_router(api_events.router)
    app.include_router(console.router)
    # The console page and its assets hold no data: the edge lets them through without a token.
    app.add_middleware(console.PublicAssets)
    live = LiveTokens(Tokens(tokens, admin_tokens & tokens))
    app.state.zitops_tokens = live

    app.add_middleware(EdgeMiddleware, tokens=live, max_body_bytes=config.limits.max_body_bytes,
                       metrics=http_metrics,
                       hosts=HostPolicy.from_settings(config.host, config.server.allowed_hosts),
                       public_paths=console.public_paths(), image_paths=image_paths(config),
                       max_image_body_bytes=config.limits.max_image_body_bytes,
                       allowed_origins=frozenset(config.server.allowed_origins))
    if tracer.enabled:
        from zitops.agent.http.trace_edge import TraceMiddleware

        app.add_middleware(TraceMiddleware, tracer=tracer)
    install_openapi(app, config.limits, config.lora_dir, controlnet=bool(config.controlnet_dir))
    return app


def owner_priorities(priorities: dict[str, int]) -> dict[str, int]:
    """token -> default priority, keyed as the routes know a caller (its token's SHA-256, never the token)."""
    return {owner_hash(t): p for t, p in priorities.items()}


def reload_tokens(app: FastAPI, tokens: Tokens) -> None:
    """Swap the tokens in force: the edge and the routes (per-token queue shares, default priorities) all see the
    new file."""
    app.state.zitops_tokens.current = tokens
    app.state.zitops = replace(app.state.zitops, tokens=tokens.all, admin_tokens=tokens.admins & tokens.all,
                               priorities=owner_priorities(tokens.priorities))
