"""The agent's edge: one pure-ASGI middleware in front of every route.

It does, in order: request id (honoured or generated, bound into structlog's
context), security headers on every response, the Host check (421; not on
the probes), bearer auth (all routes but /livez and /readyz) and who the
caller is (zitops.agent.http.tenants), admin-only routes (403), the body size
limit (before anything parses the body, chunked bodies included), HTTP
metrics, and a last-resort 500 with a logged traceback.
Pure ASGI rather than BaseHTTPMiddleware so that headers also land on 404s,
405s, 413s and error responses, and so the body can be bounded while read.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zitops.agent.http.auth import LiveTokens, match_token
from zitops.agent.http.cross_site import cross_site_refusal
from zitops.agent.http.hosts import HostPolicy
from zitops.agent.http.http_errors import error_response
from zitops.agent.http.http_metrics import UNMATCHED, HttpMetrics
from zitops.agent.http.json_guard import is_json, json_problem
from zitops.agent.http.tenants import (
    ANONYMOUS,
    CALLER_KEY,
    OPEN_CALLER,
    Caller,
    admin_only,
    owner_hash,
)
from zitops.logbook.logs import get_logger

log = get_logger("zitops.agent.http")

SECURITY_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
OPEN_PATHS = frozenset({"/livez", "/readyz"})
"""The probes: no token, no Host check; they reveal only live/ready and coarse reason codes."""
METRICS_PATH = "/metrics"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is short and safe to log, else a fresh one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class EdgeMiddleware:
    """Request id, headers, auth, body limit, metrics and the last-resort 500."""

    def __init__(self, app: ASGIApp, *, tokens: LiveTokens, max_body_bytes: int,
                 metrics: HttpMetrics, hosts: HostPolicy | None = None, public_paths: frozenset[str] = frozenset(),
                 image_paths: frozenset[str] = frozenset(), max_image_body_bytes: int = 0,
                 allowed_origins: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.allowed_origins = allowed_origins  # other origins whose pages may POST (server.allowed_origins)
        self.public_paths = public_paths  # no token needed (they hold no data); Host still checked
        self.tokens = tokens  # read per request: a reload swaps the set
        self.hosts = hosts
        self.max_body_bytes = max_body_bytes
        # Routes that take input images get their own, larger body limit (limits.max_image_body_bytes).
        self.image_paths = image_paths
        self.max_image_body_bytes = max(max_image_body_bytes, max_body_bytes)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # The synchronous routes time their Server-Timing "total" from here (api_common.request_started).
        scope.setdefault("state", {})["zitops_started"] = time.monotonic()
        headers = Headers(scope=scope)
        rid = request_id_from(headers.get("x-request-id"))
        path: str = scope.get("path", "")
        method = scope.get("method", "GET")
        state: dict[str, Any] = {"status": 0, "started": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                out = MutableHeaders(raw=raw)
                for key, value in SECURITY_HEADERS.items():
                    out[key] = value
                out["x-request-id"] = rid
                message = {**message, "headers": out.raw}
                state["status"] = message["status"]
                state["started"] = True
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self._handle(scope, receive, send_with_headers, headers, path, rid)
            except _Disconnected:
                state["status"] = state["status"] or 499
            except Exception:
                log.exception("unhandled error in request", method=method, path=path)
                if not state["started"]:
                    await error_response(
                        path, 500,
                        f"internal error (request id {rid}); the agent's log has the details",
                        code="internal_error",
                    )(scope, receive, send_with_headers)
                else:
                    state["status"] = state["status"] or 500
            finally:
                elapsed = time.perf_counter() - start
                route = getattr(scope.get("route"), "path", None) or UNMATCHED
                status = int(state["status"]) or 500
                self.metrics.observe(route, method if method in _METHODS else "OTHER", status, elapsed)

    def _caller(self, headers: Headers) -> Caller:
        keys = self.tokens.current
        if not keys.all:
            return OPEN_CALLER
        token = match_token(headers.get("authorization"), keys.all)
        if token is None:
            return ANONYMOUS
        return Caller(owner=owner_hash(token), admin=token in keys.admins)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, headers: Headers,
                      path: str, rid: str) -> None:
        host = headers.get("host")
        # Prometheus scrapes a pod by its IP, which no allowed_hosts entry can name ahead of time; where
        # tokens exist they guard /metrics, and a DNS-rebinding page cannot hold one.
        scrape = path == METRICS_PATH and bool(self.tokens.current.all)
        if self.hosts is not None and path not in OPEN_PATHS and not scrape and not self.hosts.allows(host):
            shown = "".join(c if c.isprintable() else "?" for c in (host or ""))[:80]
            await error_response(
                path, 421,
                f"Host: {shown!r} is not a name of this agent; use 127.0.0.1 or localhost, "
                "or add it to server.allowed_hosts",
                param="Host", code="misdirected_request",
            )(scope, receive, send)
            return
        refusal = cross_site_refusal(scope.get("method", ""), headers, self.allowed_origins)
        if refusal is not None:
            await error_response(path, 403, refusal, param="Origin", code="cross_site")(scope, receive, send)
            return
        who = self._caller(headers)
        if not who.authenticated and path not in OPEN_PATHS and path not in self.public_paths:
            await error_response(
                path, 401,
                "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="zitops"'}, code="unauthorized",
            )(scope, receive, send)
            return
        if admin_only(path) and not who.admin:
            await error_response(
                path, 403,
                f"{path} needs an admin token (a line 'admin:<token>' in auth.tokens_file)",
                code="forbidden",
            )(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_KEY] = who
        limit, setting = ((self.max_image_body_bytes, "limits.max_image_body_bytes") if path in self.image_paths
                          else (self.max_body_bytes, "limits.max_body_bytes"))
        too_large = error_response(
            path, 413, f"body: larger than the limit of {limit} bytes ({setting})", code="body_too_large",
        )
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        try:
            body = await self._read_body(receive, limit)
        except _TooLarge:
            await too_large(scope, receive, send)
            return
        problem = json_problem(body) if body and is_json(headers.get("content-type"), body) else None
        if problem is not None:
            await error_response(path, 422, f"{problem[0]}: {problem[1]}", param=problem[0],
                                 code="invalid_json_shape")(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        # Read the whole (bounded) body up front: the limit then holds for
        # chunked uploads too, and nothing downstream ever sees a partial body.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
