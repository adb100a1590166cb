"""The pace this host's workers denoise at, measured from running jobs' step events.

The cost check (:func:`zitops.budget.over_budget`) estimates a request with the
profile's ``generation.seconds_per_megapixel_step``, a figure calibrated on
the profile's GPU. A worker on a CPU runs orders of magnitude slower (the
seed's ecommerce request at 896x896 took 259 s on a CPU against a budget of
120 s), so on a CPU the estimate uses what this host's own jobs measured.

Only the time between the first and the last step event of a job counts:
text encoding before the first step and VAE decoding after the last are the
same for every size and would inflate the rate of small jobs. The rate is
seconds per megapixel-step per image per transformer forward, the unit of
the profile's figure. Plain values; nothing here imports the agent.
"""

from __future__ import annotations

import collections
import statistics
import time
from dataclasses import dataclass

KEEP = 8
"""Recent jobs whose pace counts (the median of them)."""
REACH = 4.0
"""How far up a measured job's pace is carried: to requests of at most this many times its work per step.
A small job's rate per megapixel-step is inflated by what every step costs whatever its size, so carried
to a request 256 times larger (64x64 to 1024x1024) it refused jobs that take seconds; past this reach the
host has not measured the request's size yet, and the estimate says so."""


@dataclass
class StepClock:
    """The step events of one running job: the first one seen and the latest."""

    work: float
    """Megapixels x images x forwards per step of the job."""
    on_cpu: bool
    first: tuple[int, float] | None = None  # (step, time.monotonic())
    last: tuple[int, float] | None = None

    def step(self, step: int) -> None:
        """A step event arrived now."""
        now = time.monotonic()
        if self.first is None:
            self.first = (step, now)
        self.last = (step, now)

    def rate(self) -> float | None:
        """Seconds per unit of work per step; None with fewer than two distinct step events."""
        if self.first is None or self.last is None or self.work <= 0:
            return None
        steps = self.last[0] - self.first[0]
        if steps <= 0:
            return None
        return (self.last[1] - self.first[1]) / steps / self.work


class Pace:
    """The median rate of the last :data:`KEEP` jobs that ran on a CPU."""

    def __init__(self, keep: int = KEEP) -> None:
        self._cpu: collections.deque[tuple[float, float]] = collections.deque(maxlen=keep)  # (rate, work)

    def add(self, clock: StepClock) -> None:
        """A job succeeded: keep its rate when it ran on a CPU and took two steps or more."""
        rate = clock.rate()
        if clock.on_cpu and rate is not None:
            self._cpu.append((rate, clock.work))

    def cpu(self, work: float = 0.0) -> tuple[float, int] | None:
        """(seconds per megapixel-step, jobs measured) on this host's CPU for a request of ``work`` per step:
        the jobs within :data:`REACH` of it count; None before such a measurement."""
        rates = [rate for rate, measured in self._cpu if measured * REACH >= work]
        if not rates:
            return None
        return statistics.median(rates), len(rates)
