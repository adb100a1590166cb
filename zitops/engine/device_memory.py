"""The real engine's device memory: torch.cuda allocator statistics, the peak window, and the cache
handed back to the driver; a part of :class:`~zitops.engine.diffusers_engine.DiffusersEngine`.

torch is imported inside the methods only (the worker's path). The engine inherits :class:`DeviceMemory`;
``device`` is the engine's own, declared here for the type checker only.
"""

from __future__ import annotations

import gc

from zitops.engine.base import MemoryStats

MIB = 2**20


class DeviceMemory:
    """The engine's memory methods (zeros and no-ops off CUDA)."""

    device: str

    def memory(self) -> MemoryStats:
        """torch.cuda allocator statistics in MiB; zeros on the CPU."""
        import torch

        if not self.device.startswith("cuda") or not torch.cuda.is_available():
            return MemoryStats()
        dev = torch.device(self.device)
        free, total = torch.cuda.mem_get_info(dev)
        return MemoryStats(
            allocated_mib=torch.cuda.memory_allocated(dev) / MIB,
            reserved_mib=torch.cuda.memory_reserved(dev) / MIB,
            peak_allocated_mib=torch.cuda.max_memory_allocated(dev) / MIB,
            device_total_mib=total / MIB, device_used_mib=(total - free) / MIB,
        )

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window (benchmarks call this per run)."""
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))

    def release_cache(self) -> None:
        """gc, then hand cached allocator blocks back to the driver."""
        import torch

        gc.collect()
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
