"""Reading failure records back: ``GET /v1/failures``'s body (:func:`failures_payload`) and the
``--since`` times the CLI and the API take (:func:`parse_since`).
"""

from __future__ import annotations

import re
import time
from typing import Any

from zitops.errors import InvalidRequest
from zitops.logbook.failures import FailureStore, _parse_iso

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

MAX_LIMIT = 1000


def failures_payload(store: FailureStore, since: str | float | None = None, limit: int | str | None = None) -> dict[str, Any]:
    """The ``GET /v1/failures`` body, ``{"failures": [...]}``; ``since`` is epoch seconds or :func:`parse_since` text."""
    since_ts: float | None = None
    if since is not None and since != "":
        try:
            since_ts = float(since)
        except ValueError:
            since_ts = parse_since(str(since))
    try:
        n = 50 if limit is None or limit == "" else int(limit)
    except ValueError:
        raise InvalidRequest(f"limit {limit!r} is not a whole number: use 1..{MAX_LIMIT}") from None
    if not 1 <= n <= MAX_LIMIT:
        raise InvalidRequest(f"limit {n} is out of range: use 1..{MAX_LIMIT}")
    return {"failures": [r.to_dict() for r in store.list(since=since_ts, limit=n)]}


def parse_since(text: str, now: float | None = None) -> float:
    """``30s``/``30m``/``1h``/``2d``/``1w`` ago, or an ISO 8601 time, as epoch seconds."""
    match = _DURATION.match(text or "")
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _UNIT_S[match.group(2).lower()]
    try:
        return _parse_iso(text)
    except (ValueError, AttributeError):
        raise InvalidRequest(
            f"since {text!r} is not understood: use a duration like 30m, 1h, 2d, 1w "
            "or an ISO 8601 time like 2026-01-31T12:00:00Z"
        ) from None
