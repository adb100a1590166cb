"""zitops.gpu: the real no-NVML path, and NVML parsing against a fake pynvml at the import edge."""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from zitops import gpu

MIB = 1024 * 1024


def test_imports_stay_light() -> None:
    """gpu, logs, failures, sdnotify and the failures command import no GPU stack at module level."""
    code = (
        "import sys, zitops.gpu, zitops.logbook.logs, zitops.logbook.failures, zitops.sdnotify, zitops.commands.failures\n"
        "heavy = sorted(m for m in ('pynvml', 'torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_real_machine_is_consistent() -> None:
    """On a CPU host NVML is absent: [] and a reason, never an exception. With a GPU, samples agree."""
    gpus = gpu.probe_gpus()
    with gpu.NvmlMonitor() as mon:
        samples = mon.sample()
        if gpus:
            assert mon.available and mon.reason is None
            assert [s.index for s in samples] == [g.index for g in gpus]
            assert all(0 < s.used_mib <= s.total_mib for s in samples)
        else:
            assert not mon.available
            assert isinstance(mon.reason, str) and mon.reason
            assert samples == []
    assert not mon.available and mon.sample() == []
    summary = gpu.describe_gpus()
    assert summary["available"] is bool(gpus) and (summary["reason"] is None) is bool(gpus)


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass
class _Mem:
    total: int
    used: int


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's field name


def _fake_pynvml(*, init_fails: bool = False, device_count: int = 2) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    state: dict[str, Any] = {"inits": 0, "shutdowns": 0, "mem_fails": False}

    def nvmlInit() -> None:  # noqa: N802 - NVML's names
        if init_fails:
            raise FakeNVMLError("Driver Not Loaded")
        state["inits"] += 1

    def nvmlShutdown() -> None:  # noqa: N802
        state["shutdowns"] += 1

    def nvmlDeviceGetMemoryInfo(h: int) -> _Mem:  # noqa: N802
        if state["mem_fails"]:
            raise FakeNVMLError("GPU is lost")
        return _Mem(total=80 * 1024 * MIB, used=(1000 + h) * MIB)

    def nvmlDeviceGetComputeRunningProcesses(h: int) -> list[_Proc]:  # noqa: N802
        if h == 1:
            raise FakeNVMLError("Not Supported")
        return [_Proc(4242, 512 * MIB), _Proc(4343, None), _Proc(4444, 2**64 - 1)]

    mod.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    mod.nvmlInit = nvmlInit  # type: ignore[attr-defined]
    mod.nvmlShutdown = nvmlShutdown  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: device_count  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3" if h == 0 else "NVIDIA H100"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = nvmlDeviceGetMemoryInfo  # type: ignore[attr-defined]
    mod.nvmlDeviceGetComputeRunningProcesses = nvmlDeviceGetComputeRunningProcesses  # type: ignore[attr-defined]
    mod.state = state  # type: ignore[attr-defined]
    return mod


def test_probe_parses_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = gpu.probe_gpus()
    assert [(g.index, g.name, g.uuid, g.total_mib) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", "GPU-0000", 81920.0),
        (1, "NVIDIA H100", "GPU-0001", 81920.0),
    ]
    assert fake.state["shutdowns"] == fake.state["inits"] == 1  # type: ignore[attr-defined]


def test_monitor_samples_devices_and_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    mon = gpu.NvmlMonitor()
    assert mon.available and mon.reason is None
    s0, s1 = mon.sample()
    assert (s0.index, s0.used_mib, s0.total_mib) == (0, 1000.0, 81920.0)
    assert s0.processes == {4242: 512.0, 4343: None, 4444: None}
    assert s1.used_mib == 1001.0 and s1.processes == {}, "an unsupported process query must not hide the device"
    assert 1.2 < s0.used_pct < 1.3

    fake.state["mem_fails"] = True  # type: ignore[attr-defined]
    assert mon.sample() == []
    assert not mon.available and "GPU 0" in str(mon.reason) and "GPU is lost" in str(mon.reason)
    assert mon.sample() == []


def test_monitor_only_watches_requested_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    assert [s.index for s in gpu.NvmlMonitor(indices=[1]).sample()] == [1]
    mon = gpu.NvmlMonitor(indices=[7])
    assert not mon.available and "7" in str(mon.reason)


def test_init_failure_is_unavailable_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_fails=True))
    mon = gpu.NvmlMonitor()
    assert not mon.available and "Driver Not Loaded" in str(mon.reason)
    assert mon.sample() == [] and gpu.probe_gpus() == []
    mon.close()


def test_no_gpu_with_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(device_count=0))
    mon = gpu.NvmlMonitor()
    assert not mon.available and mon.reason == "NVML found no GPU"
    assert gpu.describe_gpus() == {"available": False, "reason": "NVML found no GPU", "gpus": []}
