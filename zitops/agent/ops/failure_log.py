"""Failure records for the dispatcher: written best effort, read for /status.

The :class:`~zitops.logbook.failures.FailureStore` writes each record twice (JSONL and
SQLite); this wrapper fills in the job's profile, prompt and parameters and
makes sure that recording a failure never breaks the code handling it.
"""

from __future__ import annotations

from typing import Any

from zitops.agent.contract import JobRecord
from zitops.agent.ops.agent_log import AgentLog
from zitops.logbook.failures import Action, FailureStore


def lost_kind(reason: str) -> str:
    """The failure-record kind for a lost worker: our hang kill, an outside kill, or a crash."""
    if reason.startswith("killed:"):
        return "hang"
    return "killed" if "killed by" in reason else "crash"


class FailureLog:
    """Records failures in a :class:`FailureStore` (or nowhere, given None)."""

    def __init__(self, store: FailureStore | None, profile: str, log: AgentLog,
                 agent_id: str | None = None) -> None:
        self.store = store
        self.profile = profile
        self.log = log
        self.agent_id = agent_id  # the fleet agent's id (store.agent_id); None for a single agent

    def record(self, record: JobRecord | None, exc_type: str, message: str, tb: str, *, worker_id: str | None,
               vram: dict[str, Any], action: Action, kind: str = "job") -> None:
        """One failure of ``record``'s job (None: of no job), and what the agent did about it."""
        if self.store is None:
            return
        req = record.request if record else None
        try:
            self.store.record(
                job_id=record.id if record else None,
                profile=req.profile if req else self.profile,
                prompt=req.prompt if req else "",
                params=req.to_dict() if req else {},
                exc_type=exc_type, message=message, traceback=tb,
                worker_id=worker_id, vram=vram, action=action, kind=kind,
                agent_id=self.agent_id,
            )
        except Exception as exc:  # the failure log must never break the dispatcher
            self.log("warning", "could not record failure", error=str(exc))

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``limit`` records as dicts; [] when the store cannot be read."""
        if self.store is None:
            return []
        try:
            items = self.store.recent(limit)
        except Exception:  # an unreadable failure log must not break /status
            return []
        return [i if isinstance(i, dict) else getattr(i, "__dict__", {"item": str(i)}) for i in items]
