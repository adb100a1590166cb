"""Refuse cross-site state-changing requests (CSRF): a page elsewhere must not drive the agent.

A browser lets any page POST a form or a multipart body to the agent (no CORS
preflight for those), with the victim's network position: on an agent without
tokens that interrupts jobs or submits work. Browsers say where a request
comes from (``Origin``, ``Sec-Fetch-Site``); the edge refuses a state-changing
one from another origin unless ``server.allowed_origins`` names it. Clients
that are not browsers send neither header and are not affected. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping

from zitops.config import origin_of

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SETTING = "server.allowed_origins"


def cross_site_refusal(method: str, headers: Mapping[str, str], allowed: frozenset[str]) -> str | None:
    """The 403 message for a cross-site state-changing request, or None when it may go on."""
    if method.upper() not in STATE_CHANGING:
        return None
    origin = headers.get("origin")
    if origin is not None:
        seen = origin_of(origin)
        host = (headers.get("host") or "").strip().lower()
        if seen is not None and (seen in allowed or seen.split("://", 1)[1] == host):
            return None
        shown = "".join(c if c.isprintable() else "?" for c in origin)[:80]
        return (f"cross-site request refused: Origin {shown!r} is not this agent's origin; "
                f"add it to {SETTING} to allow it")
    if (headers.get("sec-fetch-site") or "").strip().lower() == "cross-site":
        return f"cross-site request refused (Sec-Fetch-Site: cross-site); add the page's origin to {SETTING}"
    return None
