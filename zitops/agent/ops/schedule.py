"""The agent's periodic rounds on its event loop, timed by the monotonic clock, with no idea what they do.

Each owner hands over its own rounds as :class:`Periodic` values: the pool
its watchdog rounds (liveness, memory), the dispatcher its retention and
sd_notify rounds, the fleet its heartbeat, reaper and outbox flush. Every
round runs on the event loop as its own task; a round whose ``run()``
returns an awaitable (one that waits on the job store off the loop) is
awaited, so it never overlaps itself, and a round that overran its period
runs again at the next point of its grid (missed runs are not caught up).

The rounds are timed by the event loop's clock (``time.monotonic``), never
the wall clock: a backward step of the wall clock (NTP stepping it, a VM
resumed) used to stop every round for the length of the step, heartbeats
and WATCHDOG=1 pings included, because APScheduler's interval triggers
follow ``datetime.now()`` (issue 24, audit finding 6).
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

from zitops.logbook.logs import get_logger

SOON_S = 0.2
"""How soon a round marked ``soon`` first runs, instead of a whole period after the start."""


@dataclass(frozen=True)
class Periodic:
    """Run ``run()`` every ``seconds``; ``soon``: the first time right after the start."""

    name: str
    seconds: float
    run: Callable[[], object]
    soon: bool = False


def next_due(due: float, now: float, seconds: float) -> float:
    """The first point of a round's grid (``due`` + k × ``seconds``, k ≥ 1) that is not in the past."""
    late = now - due
    return due + seconds * max(1, math.ceil(late / seconds)) if late > 0 else due + seconds


class Schedule:
    """The periodic rounds as tasks on the running event loop (one task per round)."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._in_round: set[str] = set()
        self._log = get_logger("zitops.agent")

    def start(self, rounds: list[Periodic]) -> None:
        """Start the rounds on the running event loop."""
        loop = asyncio.get_running_loop()
        for r in rounds:
            self._tasks[r.name] = loop.create_task(self._every(r), name=f"zitops-round-{r.name}")

    async def _every(self, r: Periodic) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + (SOON_S if r.soon else r.seconds)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self._in_round.add(r.name)
            try:
                result = r.run()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # one round's failure is logged; the round runs again next period
                self._log.error("periodic round failed", round=r.name, error=f"{type(exc).__name__}: {exc}")
            finally:
                self._in_round.discard(r.name)
            if r.name not in self._tasks:  # stopped while it ran
                return
            due = next_due(due, loop.time(), r.seconds)

    def stop(self) -> None:
        """Stop the rounds: waiting ones at once, a round in flight once it finishes."""
        tasks, self._tasks = self._tasks, {}
        for name, task in tasks.items():
            if name not in self._in_round:
                task.cancel()
