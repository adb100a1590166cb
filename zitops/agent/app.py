"""The agent's FastAPI application: routers, ops endpoints, edge middleware.

``create_app`` is pure: it builds the app around a :class:`Service` and never
touches workers, GPUs or the network, so tests can serve it with any Service.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from zitops import __version__
from zitops.agent import api_a1111, api_native, api_openai, console
from zitops.agent.api_common import ApiContext, context
from zitops.agent.contract import Service
from zitops.agent.http_errors import (
    ERROR_RESPONSES,
    http_exception_handler,
    validation_error_handler,
    zitops_error_handler,
)
from zitops.agent.http_metrics import CONTENT_TYPE, HttpMetrics
from zitops.agent.middleware import EdgeMiddleware
from zitops.config import AgentConfig
from zitops.errors import ConfigError, InvalidRequest, ZitopsError
from zitops.failures import FailureStore, failures_payload
from zitops.logs import set_levels

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

ops = APIRouter(tags=["ops"])


@ops.get("/livez")
async def livez(request: Request) -> JSONResponse:
    """The process is up: no GPU call, nothing that can wait on the queue."""
    alive = context(request).service.livez()
    return JSONResponse({"live": alive}, status_code=200 if alive else 503)


@ops.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when a worker is loaded, the queue has room and heartbeats are fresh; else 503 with reasons."""
    ready, reasons = context(request).service.readiness()
    headers = None if ready else {"Retry-After": "5"}
    return JSONResponse({"ready": ready, "reasons": reasons}, status_code=200 if ready else 503, headers=headers)


@ops.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Liveness and readiness together, with reasons."""
    service = context(request).service
    live = service.livez()
    ready, reasons = service.readiness()
    ok = live and ready
    return JSONResponse({"live": live, "ready": ready, "reasons": reasons},
                        status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


@ops.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """The runtime's status (workers, queue, uptime, failures, recoveries); never secrets."""
    ctx = context(request)
    data = dict(ctx.service.status())
    data.setdefault("version", __version__)
    data.setdefault("api_uptime_s", round(time.time() - ctx.started_at, 1))
    data.setdefault("auth", "tokens" if ctx.tokens else ("proxy" if ctx.config.auth.behind_proxy else "none"))
    return data


@ops.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text: the HTTP layer's metrics followed by the runtime's."""
    ctx = context(request)
    runtime = ctx.service.metrics_text()
    text = ctx.metrics.render()
    if runtime:
        text += runtime if runtime.endswith("\n") else runtime + "\n"
    return Response(text, media_type=CONTENT_TYPE)


@ops.get("/v1/failures", responses={422: ERROR_RESPONSES[422]})
async def failures(request: Request, since: Annotated[str | None, Query(max_length=64)] = None,
                   limit: Annotated[str | None, Query(max_length=8)] = None) -> dict[str, Any]:
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


class LogLevelsIn(BaseModel):
    """New levels for named loggers; "root" is the root logger."""

    model_config = ConfigDict(extra="forbid")

    levels: dict[str, str] = Field(description="logger name -> DEBUG|INFO|WARNING|ERROR|CRITICAL")


@ops.put("/admin/log-levels", responses={422: ERROR_RESPONSES[422]})
async def put_log_levels(body: LogLevelsIn) -> dict[str, Any]:
    """Change logger levels at runtime; returns the effective levels."""
    if not body.levels:
        raise InvalidRequest("levels: give at least one logger, e.g. {\"zitops\": \"DEBUG\"}")
    if len(body.levels) > 100:
        raise InvalidRequest("levels: at most 100 loggers at once")
    clean: dict[str, str] = {}
    for name, level in body.levels.items():
        if not name or len(name) > 200 or not name.isprintable():
            raise InvalidRequest("levels: a logger name must be 1..200 printable characters")
        upper = level.upper()
        if upper not in LEVELS:
            raise InvalidRequest(f"levels.{name}: {level[:20]!r} is not a level; allowed: {', '.join(LEVELS)}")
        clean[name] = upper
    try:
        effective = set_levels(clean)
    except ConfigError as exc:
        raise InvalidRequest(f"levels: {exc}") from None
    return {"levels": effective}


def create_app(config: AgentConfig, service: Service, *, tokens: frozenset[str]) -> FastAPI:
    """The agent's ASGI app around ``service``; ``tokens`` empty means no auth."""
    app = FastAPI(
        title="zitops agent",
        version=__version__,
        description="Z-Image-Turbo as a service: native async jobs, OpenAI Images and AUTOMATIC1111 compatible APIs.",
        docs_url=None,  # /docs and /redoc come from zitops.agent.console, on vendored assets
        redoc_url=None,
    )
    http_metrics = HttpMetrics()
    app.state.zitops = ApiContext(config=config, service=service, tokens=tokens,
                                  metrics=http_metrics, started_at=time.time())
    app.add_exception_handler(ZitopsError, zitops_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.include_router(ops)
    app.include_router(api_native.router)
    app.include_router(api_openai.router)
    app.include_router(api_a1111.router)
    app.include_router(console.router)
    app.add_middleware(EdgeMiddleware, tokens=tokens, max_body_bytes=config.limits.max_body_bytes,
                       metrics=http_metrics)
    # Outermost: the console page and its assets hold no data and load without a token.
    app.add_middleware(console.PublicAssets)
    return app
