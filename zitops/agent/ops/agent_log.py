"""The agent's structured logger (``zitops.agent``), shared by the dispatcher and its helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zitops.logbook.logs import get_logger


class AgentLog:
    """``log(level, msg, **fields)`` on the ``zitops.agent`` logger, dropping fields that are None.

    ``trace_of`` gives a traced job's trace id: its lines carry ``trace_id`` beside ``job_id``.
    """

    def __init__(self, trace_of: Callable[[str], str | None] | None = None) -> None:
        self._log = get_logger("zitops.agent")
        self._trace_of = trace_of

    def __call__(self, level: str, msg: str, **ctx: Any) -> None:
        """Log ``msg`` at ``level`` (info, warning, exception ...)."""
        job_id = ctx.get("job_id")
        if self._trace_of is not None and isinstance(job_id, str) and "trace_id" not in ctx:
            ctx["trace_id"] = self._trace_of(job_id)
        getattr(self._log, level)(msg, **{k: v for k, v in ctx.items() if v is not None})
