"""Context-parallel groups in the pool (``engine.parallel``): which GPUs make one slot, how NVML sees it.

A group of GPUs is one slot: one worker process (rank 0), which spawns the
group's other ranks itself (:mod:`zitops.worker.group`). The pool spawns,
kills and restarts it as any worker; here are the two things a group changes:
the slot's GPUs, and the card the watchdog's high-water rule reads, which is
the group's fullest (one full card stops the whole group's next job).

Pure functions; imports nothing of the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zitops.agent.workers.watchdog import GpuMemory
from zitops.errors import ConfigError


@dataclass(frozen=True)
class SlotDevices:
    """A slot's device: ``gpu`` (its first or only GPU, None for the CPU) and, for a group, all its GPUs."""

    gpu: int | None
    group: tuple[int, ...] = ()


def slot_devices(gpus: Sequence[int | None], degree: int, kind: str = "ulysses") -> list[SlotDevices]:
    """One slot per GPU, or (``degree`` > 1) per consecutive run of ``degree`` GPUs.

    On the CPU (no GPU) there is one slot either way: its group's ranks all
    run on the CPU. GPUs left over after the last whole group get no slot
    (the config's check refuses such a list; "auto" may find one).
    """
    if degree <= 1:
        return [SlotDevices(g) for g in gpus]
    cards = [g for g in gpus if g is not None]
    if not cards:
        if kind == "ring":
            raise ConfigError("profile.engine.parallel.kind ring needs GPUs (diffusers' ring attention has no "
                              "CPU kernel); this agent has none: use kind ulysses on the CPU")
        return [SlotDevices(None)]
    if len(cards) < degree:
        raise ConfigError(f"profile.engine.parallel.degree {degree}: this host gives the agent {len(cards)} "
                          f"GPU(s) ({', '.join(map(str, cards))}); a group needs {degree}")
    return [SlotDevices(cards[i], tuple(cards[i:i + degree])) for i in range(0, len(cards) - degree + 1, degree)]


def cards(gpu: int | None, group: tuple[int, ...]) -> list[int]:
    """The GPUs a slot's worker holds: its group's, its one GPU's, or none."""
    return list(group) if group else ([] if gpu is None else [gpu])


def fullest(gpu: int | None, group: tuple[int, ...], by_index: Mapping[int, GpuMemory]) -> GpuMemory | None:
    """NVML's last read of the slot's card nearest to full (by fraction): what the high-water rule judges."""
    seen = [by_index[c] for c in cards(gpu, group) if c in by_index]
    if not seen:
        return None
    return max(seen, key=lambda g: (g.used_mib / g.total_mib if g.total_mib else 0.0, -g.index))


def group_visible(group: tuple[int, ...], uuids: Mapping[int, str] | None = None) -> str | None:
    """A group worker's ``CUDA_VISIBLE_DEVICES``: all its cards in rank order (UUIDs where known); None alone."""
    if not group:
        return None
    known = uuids or {}
    return ",".join(known.get(g, str(g)) for g in group)


def spares_off(degree: int, standby: bool, hot_spare: object, overlap: bool) -> list[str]:
    """What a pool of groups turns off, by setting name: each would need a whole second group of GPUs."""
    if degree <= 1:
        return []
    wanted = {"standby_worker": standby, "hot_spare": hot_spare is not False, "overlap_recycle": overlap}
    return [name for name, on in wanted.items() if on]
