"""Real memory held on purpose: the leak drill's ballast on the engine's device.

Only the fault engine uses it, and only with ``faults.leak_memory: real``
(``zitops drill leak --real``): a drill setting, never a profile's. Each job
adds a tensor that nothing frees, so torch's allocator counts it and, on a
GPU, NVML sees the device memory in use; only the worker's exit returns it.
Imports torch inside functions (the worker process only).
"""

from __future__ import annotations

from typing import Any

from zitops.engine.base import MemoryStats

MIB = 2**20


class DeviceBallast:
    """Tensors kept alive on ``device``, ``mib`` at a time."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._held: list[Any] = []
        self.held_mib = 0.0

    def grow(self, mib: float) -> None:
        """Allocate ``mib`` MiB more and keep it."""
        import torch

        # ones, not empty: on the host the pages must really be touched to count;
        # on a GPU the allocation is already committed device memory.
        self._held.append(torch.ones(int(mib * MIB), dtype=torch.uint8, device=self.device))
        self.held_mib += mib

    def memory(self, inner: MemoryStats | None) -> MemoryStats:
        """The allocator's numbers: torch.cuda's on a GPU (the ballast included), else the inner's plus the ballast."""
        if self.device.startswith("cuda"):
            return cuda_memory(self.device)
        base = inner or MemoryStats()
        return MemoryStats(allocated_mib=base.allocated_mib + self.held_mib,
                           reserved_mib=base.reserved_mib + self.held_mib,
                           peak_allocated_mib=max(base.peak_allocated_mib, base.allocated_mib + self.held_mib),
                           device_total_mib=base.device_total_mib, device_used_mib=base.device_used_mib)


def cuda_memory(device: str) -> MemoryStats:
    """torch.cuda's allocator statistics and the device's used/total memory, in MiB."""
    import torch

    dev = torch.device(device)
    free, total = torch.cuda.mem_get_info(dev)
    return MemoryStats(allocated_mib=torch.cuda.memory_allocated(dev) / MIB,
                       reserved_mib=torch.cuda.memory_reserved(dev) / MIB,
                       peak_allocated_mib=torch.cuda.max_memory_allocated(dev) / MIB,
                       device_total_mib=total / MIB, device_used_mib=(total - free) / MIB)
