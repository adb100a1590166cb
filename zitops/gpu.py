"""GPU probing through NVML, torch-free, falling back to "no GPU" instead of failing.

``pynvml`` (the ``nvidia-ml-py`` package) is imported inside functions only, so
importing this module costs nothing on a CPU host and never loads libnvidia-ml.

- :func:`probe_gpus` lists the devices (for ``gpus: auto`` and ``/status``).
- :class:`NvmlMonitor` samples memory used/total per device and per process
  (``nvmlDeviceGetComputeRunningProcesses``), for the VRAM watch. Per-process
  usage is ``None`` where NVML cannot tell (some containers, MIG, WDDM); the
  pid is still reported so it can be matched to a worker. Inside a container
  without the host pid namespace NVML reports host pids, which then match no
  worker; the watch must treat "no match" as "unknown", not "zero".
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuInfo:
    """One device as NVML describes it."""

    index: int
    name: str
    uuid: str
    total_mib: float
    capability: tuple[int, int] | None = None
    """CUDA compute capability (major, minor), None where NVML cannot say."""


@dataclass(frozen=True)
class GpuSample:
    """Memory on one device at one moment, in MiB."""

    index: int
    used_mib: float
    total_mib: float
    processes: dict[int, float | None] = field(default_factory=dict)

    @property
    def used_pct(self) -> float:
        """Used memory as a percentage of total (0 when total is unknown)."""
        return 100.0 * self.used_mib / self.total_mib if self.total_mib else 0.0


def _text(value: Any) -> str:
    # Older bindings return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_error(pynvml: Any) -> tuple[type[BaseException], ...]:
    err = getattr(pynvml, "NVMLError", None)
    return (err, OSError) if isinstance(err, type) else (OSError,)


def _load() -> tuple[Any | None, str | None]:
    """Import pynvml and init NVML: (module, None) or (None, why not)."""
    try:
        import pynvml
    except ImportError as exc:
        return None, f"pynvml is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except _nvml_error(pynvml) as exc:
        return None, f"NVML is not available: {_text(exc) or type(exc).__name__}"
    return pynvml, None


def _capability(pynvml: Any, handle: Any) -> tuple[int, int] | None:
    read = getattr(pynvml, "nvmlDeviceGetCudaComputeCapability", None)
    if read is None:
        return None
    try:
        major, minor = read(handle)
    except _nvml_error(pynvml):
        return None
    return int(major), int(minor)


def probe_gpus() -> list[GpuInfo]:
    """Every NVML device, or [] with no driver, no NVML or no GPU."""
    pynvml, _why = _load()
    if pynvml is None:
        return []
    errors = _nvml_error(pynvml)
    out: list[GpuInfo] = []
    try:
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(
                GpuInfo(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    total_mib=float(mem.total) / MIB,
                    capability=_capability(pynvml, handle),
                )
            )
    except errors:
        return out
    finally:
        with contextlib.suppress(*errors):
            pynvml.nvmlShutdown()
    return out


class NvmlMonitor:
    """Samples device and per-process memory; ``available`` is False (with a reason) without NVML."""

    def __init__(self, indices: list[int] | None = None) -> None:
        self._lock = threading.Lock()
        self._indices = indices
        self._pynvml, self.reason = _load()
        self._handles: dict[int, Any] = {}
        if self._pynvml is not None:
            try:
                count = int(self._pynvml.nvmlDeviceGetCount())
                wanted = range(count) if indices is None else [i for i in indices if 0 <= i < count]
                self._handles = {i: self._pynvml.nvmlDeviceGetHandleByIndex(i) for i in wanted}
            except _nvml_error(self._pynvml) as exc:
                self._disable(f"NVML failed to list devices: {_text(exc)}")
            else:
                if not self._handles:
                    self._disable("NVML found no GPU" if indices is None else f"NVML found none of GPUs {indices}")

    @property
    def available(self) -> bool:
        """True while NVML is initialised and has at least one device to watch."""
        return self._pynvml is not None

    def _disable(self, reason: str) -> None:
        pynvml, self._pynvml, self.reason, self._handles = self._pynvml, None, reason, {}
        if pynvml is not None:
            with contextlib.suppress(*_nvml_error(pynvml)):
                pynvml.nvmlShutdown()

    def sample(self) -> list[GpuSample]:
        """Memory per watched device; [] (and ``available`` False) when NVML is gone."""
        with self._lock:
            pynvml = self._pynvml
            if pynvml is None:
                return []
            errors = _nvml_error(pynvml)
            out: list[GpuSample] = []
            for index, handle in self._handles.items():
                try:
                    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                except errors as exc:
                    # A device that stops answering (Xid, fallen off the bus) is a
                    # fact to report, not a reason to crash the agent.
                    self._disable(f"NVML stopped answering for GPU {index}: {_text(exc)}")
                    return []
                out.append(
                    GpuSample(
                        index=index,
                        used_mib=float(mem.used) / MIB,
                        total_mib=float(mem.total) / MIB,
                        processes=_processes(pynvml, handle, errors),
                    )
                )
            return out

    def uuids(self) -> dict[int, str]:
        """NVML's UUID of each watched device (``GPU-...``); {} without NVML.

        A worker's ``CUDA_VISIBLE_DEVICES`` names its card by this UUID, so CUDA
        opens the very device these handles read, whatever order CUDA would
        number the cards in.
        """
        with self._lock:
            pynvml = self._pynvml
            if pynvml is None:
                return {}
            out: dict[int, str] = {}
            for index, handle in self._handles.items():
                with contextlib.suppress(*_nvml_error(pynvml)):
                    out[index] = _text(pynvml.nvmlDeviceGetUUID(handle))
            return out

    def close(self) -> None:
        """Shut NVML down; the monitor reports unavailable afterwards."""
        with self._lock:
            if self._pynvml is not None:
                self._disable("closed")

    def __enter__(self) -> NvmlMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _processes(pynvml: Any, handle: Any, errors: tuple[type[BaseException], ...]) -> dict[int, float | None]:
    try:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except errors:
        return {}
    out: dict[int, float | None] = {}
    for proc in procs or ():
        used = getattr(proc, "usedGpuMemory", None)
        # NVML signals "not available" with None or NVML_VALUE_NOT_AVAILABLE (2**64 - 1).
        out[int(proc.pid)] = None if used is None or used >= 2**63 else float(used) / MIB
    return out


def worker_devices(gpus: str | Sequence[int]) -> list[int | None]:
    """The device of each worker for config ``gpus``: one per GPU, or ``[None]`` for one CPU worker."""
    if not isinstance(gpus, str):  # the only string is "auto"
        return list(gpus) or [None]
    try:
        found = probe_gpus()
    except Exception:  # no NVML, no driver: a CPU worker, never a crash
        return [None]
    return [g.index for g in found] or [None]


_UUID = re.compile(r"([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})")


def uuid_hex(text: str | None) -> str | None:
    """The 32 hex digits of a GPU UUID as NVML (``GPU-8-4-4-4-12``) or torch (``8-4-4-4-12``) writes it; None if none."""
    m = _UUID.search((text or "").lower())
    return "".join(m.groups()) if m else None


def describe_gpus() -> dict[str, Any]:
    """A JSON-friendly summary for /status: devices, or why there are none."""
    gpus = probe_gpus()
    reason = None
    if not gpus:
        pynvml, reason = _load()
        if pynvml is not None:
            reason = "NVML found no GPU"
            with contextlib.suppress(*_nvml_error(pynvml)):
                pynvml.nvmlShutdown()
    return {
        "available": bool(gpus),
        "reason": reason,
        "gpus": [{"index": g.index, "name": g.name, "uuid": g.uuid, "total_mib": g.total_mib} for g in gpus],
    }
