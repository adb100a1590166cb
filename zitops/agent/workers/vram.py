"""GPU memory reads for the watchdog: NVML through :mod:`zitops.gpu`, the last read kept.

The pool refreshes it on the watchdog's schedule; the last read answers the
overlapped recycle's room check, /status and /metrics. No NVML (no driver,
CPU-only workers) is said once and never retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from zitops.agent.workers.watchdog import GpuMemory
from zitops.logbook.logs import get_logger

Reader = Callable[[Iterable[int]], list[GpuMemory]]
"""Reads the memory of the given GPU indices; raises when NVML is unavailable."""

log = get_logger("zitops.agent")


class NvmlReader:
    """Reads the workers' GPUs through :class:`zitops.gpu.NvmlMonitor`, opened on first use."""

    def __init__(self) -> None:
        self._monitor: Any = None

    def _open(self, indices: Iterable[int]) -> Any:
        from zitops.gpu import NvmlMonitor

        if self._monitor is None:
            self._monitor = NvmlMonitor(sorted(set(indices)))
        return self._monitor

    def uuids(self, indices: Iterable[int]) -> dict[int, str]:
        """NVML's UUID per GPU index, from the same handles the memory reads use; {} without NVML."""
        uuids: dict[int, str] = self._open(indices).uuids()
        return uuids

    def __call__(self, indices: Iterable[int]) -> list[GpuMemory]:
        """Memory per GPU; raises RuntimeError (with NVML's reason) when unavailable."""
        samples = self._open(indices).sample()
        if not self._monitor.available:
            raise RuntimeError(self._monitor.reason or "NVML is not available")
        return [GpuMemory(index=s.index, used_mib=s.used_mib, total_mib=s.total_mib,
                          by_pid={pid: used for pid, used in s.processes.items() if used is not None})
                for s in samples]

    def close(self) -> None:
        """Shut NVML down."""
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None


class Vram:
    """The last NVML read of the workers' GPUs, and why there is none."""

    def __init__(self, read: Reader | None = None) -> None:
        self._read: Reader = read if read is not None else NvmlReader()
        self.gpus: list[GpuMemory] = []
        self.error: str | None = None

    def refresh(self, indices: list[int]) -> str | None:
        """Read ``indices`` again; returns NVML's error the first time a read fails, else None."""
        if self.error is not None:
            return None
        if not indices:
            self.error = "nvml unavailable: no GPU workers (CPU only)"
            log.info(self.error)
            return None
        try:
            self.gpus = self._read(indices)
        except Exception as exc:  # no NVML: report once, keep serving
            self.error = f"nvml unavailable: {exc}"
            self.gpus = []
            log.warning(self.error)
            return self.error
        return None

    def uuids(self, indices: list[int]) -> dict[int, str]:
        """Each GPU's NVML UUID, read through the watchdog's own NVML handles; {} when the reader has none."""
        read = getattr(self._read, "uuids", None)
        if read is None or not indices:
            return {}
        try:
            found: dict[int, str] = read(indices)
        except Exception as exc:  # no NVML: the workers get the index, and the memory read says why
            log.info(f"no GPU UUIDs from NVML: {exc}")
            return {}
        return found

    def by_index(self) -> dict[int, GpuMemory]:
        """The last read, by GPU index."""
        return {g.index: g for g in self.gpus}

    def free_mib(self, gpu: int) -> float | None:
        """Free MiB on ``gpu`` at the last read, or None."""
        g = self.by_index().get(gpu)
        return g.total_mib - g.used_mib if g is not None else None

    def close(self) -> None:
        """Close the reader (NVML)."""
        close = getattr(self._read, "close", None)
        if close is not None:
            close()
