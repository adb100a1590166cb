"""Who is calling, and what they may see: tenants, admins, and what the probes reveal.

The edge middleware authenticates a request and leaves a :class:`Caller` in
``scope["state"]``; routes read it with :func:`caller`. A job belongs to the
token that submitted it: the store keeps the SHA-256 of that token (never the
token), and another token gets the same 404 as for an unknown id. Admin tokens
(``admin:`` lines of the tokens file) see every job, ``/admin/*``,
``/v1/failures`` and the full ``/status``. Without tokens (loopback, or an
authenticating proxy in front) every caller is an admin, as before.

Plain functions over plain values: nothing here imports the dispatcher.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from zitops.agent.contract import JobRecord
from zitops.errors import NotFound

CALLER_KEY = "zitops_caller"
"""``scope["state"]`` key of the request's :class:`Caller`."""

ADMIN_PREFIXES = ("/admin/", "/v1/failures")
"""Routes only an admin token may use."""


@dataclass(frozen=True)
class Caller:
    """The authenticated party of one request."""

    owner: str | None
    """SHA-256 hex of the bearer token; None without tokens or without a valid token."""
    admin: bool
    authenticated: bool = True


OPEN_CALLER = Caller(owner=None, admin=True)
"""Everyone, when the agent has no tokens (loopback, or a proxy authenticates)."""
ANONYMOUS = Caller(owner=None, admin=False, authenticated=False)
"""A probe without a valid token on an agent that has tokens."""


def owner_hash(token: str) -> str:
    """What the job store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def caller(request: Request) -> Caller:
    """The Caller the edge middleware recorded (the open caller for apps served without it)."""
    state = request.scope.get("state") or {}
    found = state.get(CALLER_KEY)
    return found if isinstance(found, Caller) else OPEN_CALLER


def admin_only(path: str) -> bool:
    """True for the routes only an admin token may use."""
    return path.startswith(ADMIN_PREFIXES)


def visible(who: Caller, record: JobRecord) -> JobRecord:
    """``record`` if ``who`` may see it; else the NotFound an unknown id gets, so ids leak nothing."""
    if who.admin or who.owner is None or record.owner == who.owner:
        return record
    raise NotFound(f"job {record.id}: no such job (unknown id, or expired and removed)")


def token_cap(depth: int, share: float, tokens: int) -> int | None:
    """How many waiting jobs one token may hold: a share of the queue when two or more tokens exist.

    With one token there is no other tenant to protect, so it may fill the queue.
    """
    if tokens < 2:
        return None
    return max(1, min(depth, math.floor(depth * share)))


REASON_CODES = (
    # First: the store's reason names the call that missed its deadline ("no answer to heartbeat").
    ("store unreachable", "store_unavailable"),
    ("draining", "draining"),
    ("setup failed", "setup_failed"),
    ("flap limit", "degraded"),
    ("died", "degraded"),
    ("queue full", "queue_full"),
    ("queue is full", "queue_full"),
    ("heartbeat", "heartbeat_stale"),
    ("stalled", "loop_stalled"),
    ("no worker", "no_worker_ready"),
)
"""Substring of a readiness reason -> the coarse code an unauthenticated probe sees."""


def reason_codes(reasons: list[str]) -> list[str]:
    """Coarse, fixed codes for readiness reasons: no job ids, prompts, paths or error text."""
    codes: list[str] = []
    for reason in reasons:
        text = reason.lower()
        code = next((c for needle, c in REASON_CODES if needle in text), "not_ready")
        if code not in codes:
            codes.append(code)
    return codes


WORKER_KEYS = ("id", "role", "gpu", "state", "incarnation", "jobs_done")
"""What a non-admin token sees of each worker in /status."""


def reduced_status(data: dict[str, Any]) -> dict[str, Any]:
    """/status for a non-admin token: health, queue and workers, no job ids, prompts, paths or errors."""
    raw_queue = data.get("queue")
    queue: dict[str, Any] = raw_queue if isinstance(raw_queue, dict) else {}
    workers = [w for w in data.get("workers") or [] if isinstance(w, dict)]
    return {
        "scope": "tenant",
        "version": data.get("version"),
        "profile": data.get("profile"),
        "engine": data.get("engine"),
        "ready": data.get("ready"),
        "reasons": reason_codes([str(r) for r in data.get("reasons") or []]),
        "degraded": bool(data.get("degraded")),
        "draining": bool(data.get("draining")),
        "queue": {k: queue.get(k) for k in ("depth", "cap", "running")},
        "workers": [{k: w.get(k) for k in WORKER_KEYS} for w in workers],
        "uptime_s": data.get("uptime_s"),
        "api_uptime_s": data.get("api_uptime_s"),
        "auth": data.get("auth"),
    }
