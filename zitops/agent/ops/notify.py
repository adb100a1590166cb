"""sd_notify for the agent: READY=1 once, WATCHDOG=1 only while healthy, STATUS= always.

Sending is best effort (a failed send is logged, never raised). The counts of
pings sent and withheld let tests and /status see the watchdog's decisions
as events, without timing datagrams.
"""

from __future__ import annotations

from typing import Any

from zitops.agent.ops.agent_log import AgentLog


class SystemdNotify:
    """The agent's side of :class:`zitops.sdnotify.Notifier` (None: nothing is sent)."""

    def __init__(self, notifier: Any, log: AgentLog) -> None:
        self.notifier = notifier
        self.log = log
        self.ready_sent = False
        self.pings_sent = 0
        self.pings_withheld = 0
        """Watchdog rounds after READY=1 that sent no WATCHDOG=1 because the agent was unhealthy."""

    def interval_s(self, fallback_s: float) -> float | None:
        """How often to ping systemd: half of WATCHDOG_USEC, else ``fallback_s`` under systemd, else None."""
        if self.notifier is None:
            return None
        interval = self.notifier.watchdog_interval_s()
        if interval:
            return float(interval)
        return fallback_s if getattr(self.notifier, "enabled", False) else None

    def ready(self, summary: str) -> None:
        """READY=1 and a first STATUS=, the first time only."""
        if not self.ready_sent:
            self.ready_sent = True
            self._send("ready")
            self._send("status", summary)

    def tick(self, healthy: bool, summary: str) -> None:
        """WATCHDOG=1 only while healthy; STATUS= every time."""
        # systemd arms the watchdog only after READY=1, so pings start there too.
        if self.ready_sent and healthy:
            self.pings_sent += 1
            self._send("watchdog")
        elif self.ready_sent:
            self.pings_withheld += 1
        self._send("status", summary)

    def stopping(self) -> None:
        """STOPPING=1."""
        self._send("stopping")

    def _send(self, what: str, *args: Any) -> None:
        if self.notifier is None:
            return
        try:
            getattr(self.notifier, what)(*args)
        except Exception as exc:  # notify is best effort; never stop serving for it
            self.log("warning", "sd_notify failed", error=str(exc))
