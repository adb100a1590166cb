"""The agent's periodic rounds on its event loop (APScheduler), with no idea what they do.

Each owner hands over its own rounds as :class:`Periodic` values: the pool
its watchdog rounds (liveness, memory), the dispatcher its retention and
sd_notify rounds. Every round runs on the event loop, one at a time; a round
whose ``run()`` returns an awaitable (one that waits on the job store off the
loop) is awaited, so it never overlaps itself.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SOON_S = 0.2
"""How soon a round marked ``soon`` first runs, instead of a whole period after the start."""


@dataclass(frozen=True)
class Periodic:
    """Run ``run()`` every ``seconds``; ``soon``: the first time right after the start."""

    name: str
    seconds: float
    run: Callable[[], object]
    soon: bool = False


class Schedule:
    """APScheduler's asyncio scheduler running :class:`Periodic` rounds."""

    def __init__(self) -> None:
        self._scheduler: Any = None

    def start(self, rounds: list[Periodic]) -> None:
        """Start the rounds on the running event loop."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        sched = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        for r in rounds:
            soon = {"next_run_time": datetime.datetime.now() + datetime.timedelta(seconds=SOON_S)} if r.soon else {}
            # A coroutine, so the scheduler runs it on the event loop, not on a thread.
            sched.add_job(_on_loop(r.run), "interval", seconds=r.seconds, id=r.name, **soon)
        sched.start()
        self._scheduler = sched

    def stop(self) -> None:
        """Stop the scheduler (a round in flight finishes)."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None


def _on_loop(run: Callable[[], object]) -> Callable[[], Any]:
    async def job() -> None:
        result = run()
        if inspect.isawaitable(result):
            await result

    job.__name__ = job.__qualname__ = getattr(run, "__name__", "round")
    return job
