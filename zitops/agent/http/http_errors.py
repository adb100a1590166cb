"""One JSON error shape for every route, and the handlers that produce it.

The shape is OpenAI's, ``{"error": {"message", "type", "param", "code"}}``,
which is a superset of what the native API needs, so one shape serves all
three APIs. A1111 clients additionally get ``detail`` (FastAPI's key).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from zitops.errors import AgentUnavailable, QueueFull, StoreUnavailable, ZitopsError

DEFAULT_RETRY_AFTER_S = 5

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    421: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ErrorDetail(BaseModel):
    """What went wrong, in one line that names the field."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error response (OpenAI's shape); /sdapi routes add ``detail``."""

    error: ErrorDetail


ERROR_TEXT: dict[int, str] = {
    400: "The body is not JSON (or not in the declared content type).",
    401: "Missing or wrong bearer token (when tokens are configured).",
    403: "The route needs an admin token (an 'admin:' line of auth.tokens_file).",
    404: "No such job or image for this token (unknown, expired, or another token's).",
    408: "The request's headers or body did not arrive within server.header_timeout_s / body_timeout_s.",
    409: "The job is in the wrong state (e.g. cancelling a running job, or it was cancelled).",
    413: "Body larger than limits.max_body_bytes.",
    421: "The Host header names neither this agent nor server.allowed_hosts (DNS rebinding guard).",
    422: "Invalid or unsupported field, or over the cost budget; the message names the field.",
    429: "Queue full, or this token's share of it (queue.per_token_share); retry after Retry-After seconds.",
    500: "The job failed in the engine; the message says why (or an internal error with a request id).",
    503: "Draining or not ready; retry after Retry-After seconds.",
    507: "The job ran out of device memory, or the disk is full (or below disk.min_free_mib).",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries in the shared error shape for ``codes``."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


EDGE_CODES = (401, 421)
"""What any route but the probes may answer before it runs: no token, a foreign Host."""

ERROR_RESPONSES = responses(*EDGE_CODES, 400, 408, 413, 422, 429, 503)
"""The generation routes' error responses, replacing FastAPI's default 422 schema."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_body(path: str, status: int, message: str, *, type_: str | None = None,
               param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response for a request to ``path``."""
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": type_ or _STATUS_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    if path.startswith("/sdapi/"):
        body["detail"] = message
    return body


def error_response(path: str, status: int, message: str, *, headers: dict[str, str] | None = None,
                   type_: str | None = None, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    """A JSONResponse in the shared error shape."""
    return JSONResponse(error_body(path, status, message, type_=type_, param=param, code=code),
                        status_code=status, headers=headers)


def retry_headers(exc: ZitopsError) -> dict[str, str] | None:
    """Retry-After for refusals a client should retry (queue full, agent or job store unavailable)."""
    if isinstance(exc, (QueueFull, AgentUnavailable, StoreUnavailable)):
        return {"Retry-After": str(int(getattr(exc, "retry_after_s", DEFAULT_RETRY_AFTER_S)))}
    return None


def _param_from_message(message: str) -> str | None:
    # validate_request and the routers start messages with "field: ..."
    head, sep, _ = message.partition(":")
    return head if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\[\]]*", head) else None


async def zitops_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """ZitopsError -> its http_status with the shared error body."""
    assert isinstance(exc, ZitopsError)
    message = str(exc)
    return error_response(request.url.path, exc.http_status, message, headers=retry_headers(exc),
                          param=_param_from_message(message), code=_snake(type(exc).__name__))


_BOUNDS = {"greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le"), "greater_than": (">", "gt"),
           "less_than": ("<", "lt"), "multiple_of": ("a multiple of", "multiple_of")}


PATTERN_TEXT = {"prompt": "must not be empty or blank, or contain a NUL character",
                "negative_prompt": "must not contain a NUL character",
                "since": "must be epoch seconds (at most 6 decimals), a duration (30m, 1h, 2d) or an ISO 8601 "
                         "UTC date or time"}
"""What a field's ``pattern`` means, in words."""


def _shown(value: Any) -> str:
    """A client's value for a message: short, one line, never a 2,000-digit number spelled out."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """One line naming the first invalid field, and that field's dotted name."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc)
    kind = first.get("type", "")
    if kind == "json_invalid":
        msg = "body: not valid JSON"
        return msg, None
    if kind == "extra_forbidden":
        msg = f"{field}: unknown field; see /openapi.json for the fields this endpoint accepts"
    elif kind == "missing" and not field:
        msg = "body: a JSON object is required"
    elif kind == "missing":
        msg = f"{field}: field required"
    elif kind in _BOUNDS:
        ctx = first.get("ctx") or {}
        op, key = _BOUNDS[kind]
        msg = f"{field}: {_shown(first.get('input'))} is out of range; must be {op} {ctx.get(key)}"
    elif kind in ("literal_error", "enum"):
        expected = str((first.get("ctx") or {}).get("expected", ""))[:300]
        msg = f"{field}: {_shown(first.get('input'))} is not allowed; valid: {expected}"
    elif kind == "string_unicode":
        msg = f"{field}: not valid UTF-8 text (a lone UTF-16 surrogate such as \\ud800); send text"
    elif kind == "string_pattern_mismatch":
        msg = f"{field}: {PATTERN_TEXT.get(field.rsplit('.', 1)[-1], 'has a character that is not allowed')}"
    else:
        text = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        msg = f"{field or 'body'}: {text}"
    more = len(errors) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return " ".join(msg.split()), field or None


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Pydantic validation -> 422 with one line naming the field."""
    assert isinstance(exc, RequestValidationError)
    message, field = validation_message(list(exc.errors()))
    return error_response(request.url.path, 422, message, param=field, code="invalid_request")


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    # FastAPI >= 0.16x keeps an included router as one wrapper route: its own routes sit inside it.
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own Allow names only the first route's)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette HTTPException (404, 405, body parse errors) -> the shared shape."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    if status == 404 and detail == "Not Found":
        detail = f"{request.method} {request.url.path}: no such endpoint; see /openapi.json"
    elif status == 405:
        allowed = allowed_methods(request)
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
        return error_response(request.url.path, status, detail, headers={"Allow": ", ".join(allowed)})
    elif status == 400 and "parsing the body" in detail:
        detail = "body: could not be parsed as JSON"
    return error_response(request.url.path, status, detail, headers=dict(exc.headers or {}))
