"""The dispatcher loop's health: is it ticking, and is its step failing?

The loop runs its dispatch step every tick. A step that raises is recorded
once per failing stretch (one log line with the traceback, one failure
record), not once per tick; from the first failure until a step succeeds
again, readiness says why and the sd_notify watchdog pings stop. A loop that
stops ticking at all (a blocked event loop) shows as stalled after
:data:`STALL_AFTER_S`.
"""

from __future__ import annotations

import time
import traceback

from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.failure_log import FailureLog

STALL_AFTER_S = 2.0
"""How old the last dispatcher tick may be before the loop counts as stalled."""


class LoopHealth:
    """The last good tick, and the error the loop's step is failing with (None while it works)."""

    def __init__(self, log: AgentLog, failures: FailureLog) -> None:
        self.log = log
        self.failures = failures
        self.tick_at = time.monotonic()
        self.error: str | None = None
        self.failing_since: float | None = None
        self.failed_ticks = 0
        """Steps that raised in the current failing stretch (0 while the loop works)."""

    def ticked(self) -> None:
        """A step succeeded; ends a failing stretch."""
        if self.error is not None:
            self.log("info", "dispatcher loop recovered", error=self.error, failed_ticks=self.failed_ticks)
            self.error, self.failing_since, self.failed_ticks = None, None, 0
        self.tick_at = time.monotonic()

    def failed(self, exc: Exception) -> None:
        """A step raised ``exc``; call it inside the ``except`` block (the traceback is recorded)."""
        self.failed_ticks += 1
        if self.error is not None:
            return
        self.error = f"{type(exc).__name__}: {exc}"
        self.failing_since = time.monotonic()
        self.log("exception", "dispatcher loop error", error=self.error)
        # "retry": the loop runs the step again next tick.
        self.failures.record(None, type(exc).__name__, self.error, traceback.format_exc(), worker_id=None,
                             vram={}, action="retry", kind="dispatcher")

    def reasons(self) -> list[str]:
        """Why the loop is not healthy: failing (since when, with what) or stalled; [] when healthy."""
        now = time.monotonic()
        if self.error is not None and self.failing_since is not None:
            return [f"dispatcher loop failing for {now - self.failing_since:.1f}s "
                    f"({self.failed_ticks} ticks): {self.error}"]
        age = now - self.tick_at
        return [f"dispatcher loop stalled for {age:.1f}s"] if age > STALL_AFTER_S else []
