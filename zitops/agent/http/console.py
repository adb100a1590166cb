"""The operator's console: the page at ``/``, its assets, ``/docs``, ``/redoc`` and the VRAM history.

The page and its assets hold no data, so :class:`PublicAssets` serves them in
front of the edge middleware, without a token: a browser cannot send a bearer
token when it navigates. Everything the page shows comes from the API
(``/status``, ``/v1/jobs``, ``/sdapi/v1/samplers``, ``/v1/vram/history``)
with the token the operator typed, so the data keeps the API's auth.

Every asset is in the package (``zitops/agent/static``); nothing is fetched
from a CDN. A Content-Security-Policy on each page holds the browser to the
agent's own origin, which also stops the one image redoc would fetch from
``cdn.redoc.ly``.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from zitops.agent.http.api_common import context

STATIC_DIR = Path(__file__).parent.parent / "static"
VENDOR = "static/vendor"

CONSOLE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
"""The console's policy: its own scripts and styles only; images from blob: URLs it made."""

ASSET_HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-cache",
                 "referrer-policy": "no-referrer"}

router = APIRouter()


def public_paths(root: Path = STATIC_DIR) -> frozenset[str]:
    """The URL paths of the page and its assets: they hold no data, so they need no token."""
    return frozenset(_asset_table(root))


def _asset_table(root: Path) -> dict[str, Path]:
    """URL path -> file for every file under ``root`` (a fixed table: no path from a request reaches the disk)."""
    table = {"/": root / "index.html"}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(".md") and "__pycache__" not in path.parts:
            table["/static/" + path.relative_to(root).as_posix()] = path
    return table


class PublicAssets:
    """Serve the console page and ``/static/*``; pass everything else on.

    It sits inside the edge middleware, which lets :func:`public_paths` through
    without a token but still checks their Host and counts them.
    """

    def __init__(self, app: ASGIApp, root: Path = STATIC_DIR) -> None:
        self.app = app
        self.assets = _asset_table(root)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer GET/HEAD for a known asset; anything else goes to the wrapped app."""
        path = scope.get("path", "") if scope["type"] == "http" else ""
        file = self.assets.get(path)
        if file is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        media = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if media.startswith("text/") or media in ("application/javascript", "text/javascript"):
            media += "; charset=utf-8"
        headers = dict(ASSET_HEADERS)
        if path == "/":
            headers["content-security-policy"] = CONSOLE_CSP
        await FileResponse(file, media_type=media, headers=headers)(scope, receive, send)


def _inline_script_hashes(html: str) -> str:
    """CSP source expressions for each inline ``<script>`` in ``html``."""
    bodies = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in bodies
    )


def _docs_response(page: HTMLResponse, *, workers: bool = False) -> HTMLResponse:
    """The page with a policy that admits its own inline script (by hash) and nothing off-site."""
    html = bytes(page.body).decode()
    # The two UIs set styles inline (redoc through styled-components), so styles need 'unsafe-inline'.
    csp = (f"default-src 'self'; script-src 'self' {_inline_script_hashes(html)}; "
           "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
    if workers:
        csp += "; worker-src 'self' blob:"
    return HTMLResponse(html, headers={"content-security-policy": csp, "referrer-policy": "no-referrer"})


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI from the vendored swagger-ui-dist (no CDN)."""
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=root + (request.app.openapi_url or "/openapi.json"),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/{VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{root}/{VENDOR}/swagger-ui/favicon-32x32.png",
        # The default validator badge would call validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _docs_response(page)


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc from the vendored redoc bundle, without Google Fonts."""
    root = _root(request)
    page = get_redoc_html(
        openapi_url=root + (request.app.openapi_url or "/openapi.json"),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/{VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{root}/{VENDOR}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )
    return _docs_response(page, workers=True)


@router.get("/v1/vram/history", tags=["ops"])
async def vram_history(request: Request) -> dict[str, Any]:
    """VRAM over the last hour per device (``cpu`` without a GPU), as columns.

    ``gpus.<id>``: ``t`` (epoch seconds), ``allocated_mib`` and ``reserved_mib``
    (torch's allocator, summed over the device's live workers), ``used_mib``
    (the whole device: NVML, or the workers' own report when ``used_from`` is
    ``worker``), ``total_mib``. A null is a tick without that reading.
    """
    return context(request).service.vram_history()
