"""The pool's memory round for a context-parallel group: NVML is read for every card of the group, and the
high-water rule fires on whichever card is full (here the second, which rank 0's own report never sees).

No process is started: the pool is built with an NVML reader that replays an H100 pair, its slot is put in
the state a ready worker leaves it in, and the watchdog's actions are collected where the pool applies them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.runtime_support import runtime_config
from zitops.agent.workers import watchdog as policy
from zitops.agent.workers.pool import Pool
from zitops.agent.workers.watchdog import GpuMemory

H100_MIB = 81_559.0


class Cards:
    """An NVML reader replaying one reading per card, recording which cards were asked for."""

    def __init__(self, used: dict[int, float]) -> None:
        self.used = used
        self.asked: list[list[int]] = []

    def __call__(self, indices: Iterable[int]) -> list[GpuMemory]:
        wanted = sorted(set(indices))
        self.asked.append(wanted)
        return [GpuMemory(i, self.used[i], H100_MIB, {}) for i in wanted]


class Listener:
    """The pool's owner, which this test does not need."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def memory_actions(tmp: Path, degree: int, used: dict[int, float]) -> tuple[Cards, list[policy.Action]]:
    config = runtime_config(tmp, kind="faulty", sets=[f"engine.parallel.degree={degree}",
                                                      "watchdog.hot_spare=false", "watchdog.idle_cache_clear_mib=0"])
    cards = Cards(used)
    pool = Pool(config, [0, 1], Listener(), read_vram=cards)
    for slot in pool.slots:
        slot.state, slot.pid, slot.jobs_done = "ready", 4242 + slot.gpu if slot.gpu is not None else 0, 1
    seen: list[policy.Action] = []
    pool.apply = seen.extend  # type: ignore[method-assign, assignment]
    pool.check_memory()
    return cards, seen


def test_the_high_water_rule_sees_a_full_second_card_of_a_group(tmp_path: Path) -> None:
    cards, actions = memory_actions(tmp_path, 2, {0: 40_000.0, 1: 80_000.0})
    assert cards.asked == [[0, 1]]  # one slot, both cards read
    assert [(type(a).__name__, a.pid) for a in actions] == [("RecycleWorker", 4242)]
    assert "high water: GPU memory 80000/81559 MiB" in actions[0].reason  # type: ignore[union-attr]


def test_a_group_with_room_on_every_card_is_left_alone(tmp_path: Path) -> None:
    _, actions = memory_actions(tmp_path, 2, {0: 40_000.0, 1: 41_000.0})
    assert actions == []


def test_one_worker_per_card_is_judged_by_its_own_card(tmp_path: Path) -> None:
    cards, actions = memory_actions(tmp_path, 1, {0: 40_000.0, 1: 80_000.0})
    assert cards.asked == [[0, 1]]
    assert [a.pid for a in actions] == [4243]  # the worker on card 1, not the one on card 0
