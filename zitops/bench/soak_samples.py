"""What the soak (benchmarks/soak.py) samples after each job: a process's RSS, threads and fds, NVML's per-process memory.

Standard library only (the NVML monitor is passed in): the soak's client side never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def gpu_processes(monitor: Any) -> dict[int, float | None]:
    """NVML's memory per process (MiB) on the soak's GPUs: the serving worker's own, apart from a hot spare's."""
    if monitor is None or not monitor.available:
        return {}
    return {pid: mib for sample in monitor.sample() for pid, mib in sample.processes.items()}


def proc_stats(pid: int | None) -> dict[str, float | None]:
    """RSS (MiB), threads and open fds of ``pid`` from /proc; Nones when it is gone."""
    out: dict[str, float | None] = {"rss_mib": None, "threads": None, "fds": None}
    if not pid:
        return out
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mib"] = int(line.split()[1]) / 1024.0
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out
