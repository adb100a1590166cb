"""A job's place in the queue as the caller asks for it: priority and deadline (docs/api.md "Priorities").

The native body carries ``priority`` and ``max_queue_s``; every route also
takes them as headers, for the OpenAI and A1111 bodies whose schemas are not
ours to change. The token's default priority comes from the tokens file.
"""

from __future__ import annotations

from fastapi import Request

from zitops.agent.contract import DEFAULT_PRIORITY
from zitops.agent.http.tenants import caller
from zitops.errors import InvalidRequest

PRIORITY_HEADER = "x-zitops-priority"
DEADLINE_HEADER = "x-zitops-max-queue-s"
MAX_QUEUE_CAP_S = 86_400


def _header_int(request: Request, name: str, field_name: str, low: int, high: int) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{field_name} (header {name}): {raw[:20]!r} is not a whole number in {low}..{high}")
    return int(raw)


def queue_terms(request: Request, priority: int | None, max_queue_s: int | None) -> dict[str, int]:
    """The job's priority (asked for, else the token's default) and deadline, for ``request.extra``.

    A body field wins over its header. Only admin tokens (or everyone, on an
    agent without tokens) may ask for more than the token's default.
    """
    priorities: dict[str, int] = request.app.state.zitops.priorities
    who = caller(request)
    default = priorities.get(who.owner, DEFAULT_PRIORITY) if who.owner is not None else DEFAULT_PRIORITY
    asked = priority if priority is not None else _header_int(request, PRIORITY_HEADER, "priority", 0, 2)
    if asked is not None and asked > default and not who.admin:
        raise InvalidRequest(f"priority: {asked} is above this token's default ({default}); only admin tokens "
                             "may raise it (0 low, 1 normal, 2 high)")
    deadline = max_queue_s if max_queue_s is not None else _header_int(
        request, DEADLINE_HEADER, "max_queue_s", 1, MAX_QUEUE_CAP_S)
    return {"priority": default if asked is None else asked, **({"max_queue_s": deadline} if deadline else {})}
