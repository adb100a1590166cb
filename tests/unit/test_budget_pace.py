"""The cost policy's rate: the profile's GPU calibration, or a CPU host's measured pace (pure values)."""

from __future__ import annotations

from zitops.agent.pace import Pace, StepClock
from zitops.budget import over_budget, pick_rate, work_per_step


def _clock(work: float, on_cpu: bool, first: tuple[int, float], last: tuple[int, float]) -> StepClock:
    clock = StepClock(work, on_cpu)
    clock.first, clock.last = first, last
    return clock


def test_the_pace_counts_only_the_steps_between_the_first_and_last_event() -> None:
    # 3 steps in 6 s between step 1 and step 4 of a 0.5-unit job: 4 s per unit per step.
    assert _clock(0.5, True, (1, 10.0), (4, 16.0)).rate() == 4.0
    assert _clock(0.5, True, (2, 10.0), (2, 10.0)).rate() is None  # one event: no interval


def test_a_cpu_host_uses_the_median_of_its_own_jobs_and_a_gpu_host_its_calibration() -> None:
    pace = Pace(keep=3)
    assert pace.cpu() is None
    pace.add(_clock(1.0, False, (1, 0.0), (3, 100.0)))  # a GPU job never counts as the CPU's pace
    assert pace.cpu() is None
    for seconds in (2.0, 4.0, 40.0, 6.0):  # the oldest (2.0) falls out of the last 3
        pace.add(_clock(1.0, True, (1, 0.0), (2, seconds)))
    assert pace.cpu() == (6.0, 3)
    assert pick_rate(0.1, cpu_only=False, measured=(6.0, 3))[0] == 0.1
    rate, basis = pick_rate(0.1, cpu_only=True, measured=(6.0, 3))
    assert rate == 6.0 and basis == "measured on this host's CPU over its last 3 jobs"
    assert "has not measured a job of this size yet" in pick_rate(0.1, cpu_only=True, measured=None)[1]


def test_a_small_jobs_pace_is_not_carried_to_a_request_far_larger() -> None:
    # Every step costs something whatever its size: a 64x64 job's rate per megapixel-step, carried to
    # 1024x1024 (256 times the work), refused requests that take seconds on the tiny model.
    pace = Pace()
    pace.add(_clock(0.004, True, (1, 0.0), (2, 0.5)))
    assert pace.cpu(0.004) == (125.0, 1) and pace.cpu(0.016) == (125.0, 1)  # within REACH (4x) of it
    assert pace.cpu(1.0) is None  # not measured at this size: the estimate says so
    pace.add(_clock(1.0, True, (1, 0.0), (2, 2.0)))
    assert pace.cpu(1.0) == (2.0, 1)  # only the comparable job counts


def test_the_seed_request_at_a_cpu_pace_is_over_budget_and_says_why() -> None:
    assert work_per_step(896, 896, 1, "heun") == 896 * 896 / 1e6 * 2
    fits = over_budget(896, 896, 8, 1, "euler", seconds_per_megapixel_step=0.115, max_job_seconds=120,
                       job_timeout_s=600)
    assert fits is None
    why = over_budget(896, 896, 8, 1, "euler", seconds_per_megapixel_step=40.0, max_job_seconds=120,
                      job_timeout_s=600, basis="measured on this host's CPU over its last 8 jobs")
    assert why is not None and "estimated at 257 s (measured on this host's CPU" in why and "budget of 120 s" in why
