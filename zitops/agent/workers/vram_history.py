"""VRAM over the last hour, per GPU: a bounded ring buffer fed by the watchdog's tick.

Each sample is (time, gpu, torch allocated, torch reserved, device used) in
MiB. Allocated and reserved are the sums of the live workers' own allocator
reports on that device; "used" is NVML's reading of the whole device, or,
where NVML is absent (a CPU host, the fault engine), the workers' own
device report, and the series says which (``used_from``).

The buffer belongs to the service that feeds it: :func:`history_of` keeps one
per service object (weakly), so the dispatcher feeds it with one call and the
console's route reads it through the same service, with no import between
them and no global shared by two agents in one test process.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

WINDOW_S = 3600.0
"""How far back the history reaches."""

MAX_SAMPLES = 3600
"""Samples kept per GPU at most: one a second over the window, whatever the tick rate."""

LIVE_STATES = frozenset({"ready", "busy"})
"""Worker states whose allocator report describes memory held now."""


class MemoryLike(Protocol):
    """What a worker's last memory report offers (``zitops.worker.protocol.MemoryReport``)."""

    @property
    def allocated_mib(self) -> float: ...
    @property
    def reserved_mib(self) -> float: ...
    @property
    def device_used_mib(self) -> float: ...
    @property
    def device_total_mib(self) -> float: ...


class SlotLike(Protocol):
    """What a pool slot offers (``zitops.agent.workers.pool.WorkerSlot``)."""

    @property
    def gpu(self) -> int | None: ...
    @property
    def state(self) -> str: ...
    @property
    def memory(self) -> MemoryLike | None: ...


class GpuLike(Protocol):
    """An NVML reading of one GPU (``zitops.agent.workers.watchdog.GpuMemory``)."""

    @property
    def index(self) -> int: ...
    @property
    def used_mib(self) -> float: ...
    @property
    def total_mib(self) -> float: ...


@dataclass(frozen=True)
class Sample:
    """One device at one tick (MiB; None where nothing reported it)."""

    t: float
    gpu: str
    allocated_mib: float | None
    reserved_mib: float | None
    used_mib: float | None
    total_mib: float | None
    used_from: str | None  # "nvml", "worker" or None


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 1)


def samples_from(now: float, gpus: Iterable[GpuLike], slots: Iterable[SlotLike]) -> list[Sample]:
    """One sample per device seen by NVML or by a live worker (a pure function of the tick)."""
    nvml = {str(g.index): g for g in gpus}
    alloc: dict[str, float] = {}
    reserved: dict[str, float] = {}
    worker_used: dict[str, tuple[float, float]] = {}
    for slot in slots:
        m = slot.memory
        if m is None or slot.state not in LIVE_STATES:
            continue
        key = "cpu" if slot.gpu is None else str(slot.gpu)
        alloc[key] = alloc.get(key, 0.0) + m.allocated_mib
        reserved[key] = reserved.get(key, 0.0) + m.reserved_mib
        if m.device_total_mib:
            seen_used, seen_total = worker_used.get(key, (0.0, 0.0))
            # Two workers on one device (an overlapped recycle) report the same device.
            worker_used[key] = (max(seen_used, m.device_used_mib), max(seen_total, m.device_total_mib))
    out = []
    for key in sorted(set(nvml) | set(alloc), key=lambda k: (k == "cpu", k.zfill(4))):
        g = nvml.get(key)
        used: float | None
        total: float | None
        if g is not None:
            used, total, source = g.used_mib, g.total_mib, "nvml"
        elif key in worker_used:
            (used, total), source = worker_used[key], "worker"
        else:
            used = total = None
            source = None
        out.append(Sample(t=now, gpu=key, allocated_mib=_round(alloc.get(key)),
                          reserved_mib=_round(reserved.get(key)), used_mib=_round(used),
                          total_mib=_round(total), used_from=source))
    return out


class VramHistory:
    """Per-GPU ring buffers of :class:`Sample`, bounded in time and in count."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self.max_samples = max_samples
        self.min_gap_s = window_s / max_samples
        self._by_gpu: dict[str, collections.deque[Sample]] = {}
        # The watchdog appends on the event loop; the route may read from a worker thread.
        self._lock = threading.Lock()

    def add(self, sample: Sample) -> None:
        """Keep ``sample`` unless its device already has one less than ``min_gap_s`` older."""
        with self._lock:
            ring = self._by_gpu.setdefault(sample.gpu, collections.deque(maxlen=self.max_samples))
            if ring and sample.t - ring[-1].t < self.min_gap_s:
                return
            ring.append(sample)
            cutoff = sample.t - self.window_s
            while ring and ring[0].t < cutoff:
                ring.popleft()

    def record(self, gpus: Iterable[GpuLike], slots: Iterable[SlotLike], now: float | None = None) -> None:
        """Add this tick's samples (the watchdog's NVML reading plus the workers' reports)."""
        for sample in samples_from(time.time() if now is None else now, gpus, slots):
            self.add(sample)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Columns per device, oldest first, for the last ``window_s`` seconds (uPlot's data layout)."""
        cutoff = (time.time() if now is None else now) - self.window_s
        gpus: dict[str, Any] = {}
        with self._lock:
            rings = {k: [s for s in v if s.t >= cutoff] for k, v in self._by_gpu.items()}
        for key, ring in rings.items():
            if not ring:
                continue
            last = ring[-1]
            gpus[key] = {
                "t": [round(s.t, 3) for s in ring],
                "allocated_mib": [s.allocated_mib for s in ring],
                "reserved_mib": [s.reserved_mib for s in ring],
                "used_mib": [s.used_mib for s in ring],
                "total_mib": last.total_mib,
                "used_from": last.used_from,
            }
        return {"window_s": self.window_s, "max_samples": self.max_samples, "gpus": gpus}
