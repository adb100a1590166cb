"""A recorded NVML at the import edge: a stand-in ``pynvml`` that replays samples.

zitops imports ``pynvml`` inside functions only (:mod:`zitops.gpu`), so a test
puts a :class:`RecordedNvml` into ``sys.modules["pynvml"]`` and everything
above that edge (``NvmlMonitor``, the watchdog's reader and policies) runs for
real. The numbers are those of an H200 (``nvidia-smi`` reports 143771 MiB)
serving one worker; the test moves through them with :meth:`RecordedNvml.play`
and learns from the agent's own /status when a sample has been read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024
H200_TOTAL_MIB = 143_771


class RecordedNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass(frozen=True)
class Sample:
    """One reading of one device: memory used, and per process (pid -> MiB, None = not available)."""

    used_mib: float
    processes: dict[int, float | None] = field(default_factory=dict)
    total_mib: float = H200_TOTAL_MIB


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _Process:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's field name


# One worker's life on an H200: loaded (weights and activations of a 1024x1024 job), then a leak
# that leaves the device 97% full. The pid is a placeholder for the live worker's.
WORKER = -1
LOADED = Sample(used_mib=31_020, processes={WORKER: 30_480})
LEAKED = Sample(used_mib=139_460, processes={WORKER: 138_920})
NO_ROOM = Sample(used_mib=84_000, processes={WORKER: 83_460})  # a second copy (x1.15) cannot fit


class RecordedNvml:
    """``pynvml`` replaying :class:`Sample` readings for device 0 (one device)."""

    NVMLError = RecordedNVMLError
    NVML_VALUE_NOT_AVAILABLE = 2**64 - 1

    def __init__(self, sample: Sample, name: str = "NVIDIA H200", capability: tuple[int, int] | None = (9, 0)) -> None:
        self.sample = sample
        self.name = name
        self.capability = capability  # None: NVML answers "Not Supported"
        self.pids: dict[int, int] = {}  # placeholder -> live pid
        self.inits = self.shutdowns = self.reads = 0

    def play(self, sample: Sample, **pids: int) -> None:
        """From now on every read returns ``sample`` (``worker=PID`` fills the placeholder)."""
        if "worker" in pids:
            self.pids[WORKER] = pids["worker"]
        self.sample = sample

    # -- the pynvml calls zitops makes ------------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        if index != 0:
            raise RecordedNVMLError("Invalid Argument")
        return "handle-0"

    def nvmlDeviceGetName(self, handle: str) -> bytes:  # noqa: N802
        return self.name.encode()

    def nvmlDeviceGetCudaComputeCapability(self, handle: str) -> tuple[int, int]:  # noqa: N802
        if self.capability is None:
            raise RecordedNVMLError("Not Supported")
        return self.capability

    def nvmlDeviceGetUUID(self, handle: str) -> str:  # noqa: N802
        return "GPU-4f1c0f2e-0000-0000-0000-000000000000"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> _Memory:  # noqa: N802
        self.reads += 1
        s = self.sample
        return _Memory(total=int(s.total_mib * MIB), free=int((s.total_mib - s.used_mib) * MIB),
                       used=int(s.used_mib * MIB))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[_Process]:  # noqa: N802
        return [_Process(self.pids.get(pid, pid),
                         self.NVML_VALUE_NOT_AVAILABLE if mib is None else int(mib * MIB))
                for pid, mib in self.sample.processes.items()]


# Two H200s of one host, each with its own UUID (nvidia-smi -L's form). Placeholders for two workers' pids.
CARD_UUIDS = ("GPU-5b1e2c3d-0a1b-4c2d-8e3f-102030405060", "GPU-9f8e7d6c-5b4a-4392-8170-a0b0c0d0e0f0")
WORKER_A, WORKER_B = -1, -2


class RecordedCards(RecordedNvml):
    """``pynvml`` with one :class:`Sample` per device, each device with its own UUID."""

    def __init__(self, samples: list[Sample], uuids: tuple[str, ...] = CARD_UUIDS) -> None:
        super().__init__(samples[0])
        self.samples = list(samples)
        self.uuids = uuids

    def play_cards(self, samples: list[Sample], **pids: int) -> None:
        """From now on device i reads ``samples[i]``; ``a=PID``/``b=PID`` fill the placeholders."""
        self.pids.update({WORKER_A: pids["a"], WORKER_B: pids["b"]} if pids else {})
        self.samples = list(samples)

    def _index(self, handle: str) -> int:
        return int(handle.removeprefix("handle-"))

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.samples)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        if not 0 <= index < len(self.samples):
            raise RecordedNVMLError("Invalid Argument")
        return f"handle-{index}"

    def nvmlDeviceGetUUID(self, handle: str) -> str:  # noqa: N802
        return self.uuids[self._index(handle)]

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> _Memory:  # noqa: N802
        self.sample = self.samples[self._index(handle)]
        return super().nvmlDeviceGetMemoryInfo(handle)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[_Process]:  # noqa: N802
        self.sample = self.samples[self._index(handle)]
        return super().nvmlDeviceGetComputeRunningProcesses(handle)
