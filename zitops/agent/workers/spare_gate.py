"""When a hot spare may build: pure policy, observations in, a decision out.

A hot spare builds (loads the model, compiles, runs the warm-up) on the GPU
that serves the slot's jobs; on an H100 that build took 38 s and raised the
serving p99 under 12 clients (issue 26). ``watchdog.spare_build`` picks:

- ``always``: the spare builds at once, beside jobs (the gate stays open);
- ``idle``: the spare's build work goes on only while the slot's serving
  worker has been idle for :data:`IDLE_GRACE_S`; a job that arrives closes
  the gate, and the spare stops at its next step.

The grace keeps the gate shut across the moment between two jobs of a busy
queue: the next job is handed over in the same callback that frees the
slot, but an HTTP client's next request comes a little later. The pool owns
the gate (:class:`zitops.agent.workers.hot_spare.HotSpare` sends ``Gate``);
this module imports nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass

SPARE_BUILD = ("idle", "always")
"""The settings of ``watchdog.spare_build``."""

IDLE_GRACE_S = 0.5
"""How long the serving worker must have been idle before its spare may build."""


@dataclass(frozen=True)
class GateDecision:
    """Whether the spare may work now, and when to ask again (an idle slot still inside its grace)."""

    open: bool
    ask_again_s: float | None = None


def gated(setting: str) -> bool:
    """Whether spares are built behind a gate at all (``always`` never sends one)."""
    return setting != "always"


def spare_gate(setting: str, slot_busy: bool, idle_for_s: float | None,
               grace_s: float = IDLE_GRACE_S) -> GateDecision:
    """The gate for a slot's building spare.

    ``slot_busy``: the slot's worker has a job (or is between a job and its
    memory report); ``idle_for_s``: how long it has been idle (None: not
    known, e.g. it never ran a job, counted as idle long enough).
    """
    if not gated(setting):
        return GateDecision(True)
    if slot_busy:
        return GateDecision(False)
    if idle_for_s is None or idle_for_s >= grace_s:
        return GateDecision(True)
    return GateDecision(False, grace_s - idle_for_s)
