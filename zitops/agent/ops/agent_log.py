"""The agent's structured logger (``zitops.agent``), shared by the dispatcher and its helpers."""

from __future__ import annotations

from typing import Any

from zitops.logbook.logs import get_logger


class AgentLog:
    """``log(level, msg, **fields)`` on the ``zitops.agent`` logger, dropping fields that are None."""

    def __init__(self) -> None:
        self._log = get_logger("zitops.agent")

    def __call__(self, level: str, msg: str, **ctx: Any) -> None:
        """Log ``msg`` at ``level`` (info, warning, exception ...)."""
        getattr(self._log, level)(msg, **{k: v for k, v in ctx.items() if v is not None})
