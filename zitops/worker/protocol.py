"""The messages between the agent and a worker process.

Small frozen dataclasses, pickled over a ``multiprocessing`` Pipe. The agent
sends Job, Steer, ClearCache and Shutdown, Assign to a standby spare and Gate
to a hot spare that builds only while its slot is idle; the worker sends Ready,
Heartbeat, Progress, Result, Failure and MemoryReport (a standby spare:
SpareReady, then SparePreloaded when it preloads the model; a gated hot spare:
GateWait when it pauses at a closed gate and when it goes on). Nothing here imports torch.

A ``Result`` carries raw pixels, not files: the agent encodes and writes them
on a thread pool while the worker already runs its next job, so PNG encoding
stays off the GPU's critical path (issue 7).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    """Run one generation request; its images come back raw in a Result."""

    job_id: str
    request: dict[str, Any]  # GenerationRequest.to_dict()
    attempt: int = 1
    trace: dict[str, str] = field(default_factory=dict)  # W3C traceparent of the job's span; {} untraced


@dataclass(frozen=True)
class ClearCache:
    """Return cached allocator blocks to the device; the worker obeys only when idle."""


@dataclass(frozen=True)
class Shutdown:
    """Finish the current job, then exit 0."""

    reason: str = "stop"


@dataclass(frozen=True)
class Ready:
    """The engine is set up; the worker takes jobs from now on."""

    worker_id: str
    pid: int
    incarnation: int
    device: str
    setup_s: float
    describe: dict[str, Any] = field(default_factory=dict)
    startup: dict[str, Any] = field(default_factory=dict)  # start-up phases (process.startup_phases)


@dataclass(frozen=True)
class Assign:
    """Sent to a standby spare: become worker ``worker_id`` (then it runs ``worker_main``)."""

    worker_id: str
    gpu: int | None
    incarnation: int
    config_data: dict[str, Any]
    sent_at: float  # time.time() in the agent, for the start-up phases
    gate: bool | None = None  # a gated hot spare's gate as it starts (see Gate); None: not gated


@dataclass(frozen=True)
class SpareReady:
    """A standby spare finished its imports and waits for Assign."""

    pid: int
    imports_s: float


@dataclass(frozen=True)
class SparePreloaded:
    """A standby spare's model preload ended (after its SpareReady): the seconds, or why it failed."""

    pid: int
    seconds: float | None
    error: str | None = None


@dataclass(frozen=True)
class Gate:
    """To a hot spare still building: it may start its next piece of set-up or warm-up work (or not).

    The spare reads it before its engine set-up, before each warm-up generation
    and between the denoising steps of one; the pool sends it when its policy's
    answer changes (:mod:`zitops.agent.workers.spare_gate`).
    """

    open: bool


@dataclass(frozen=True)
class GateWait:
    """From a gated hot spare: it stopped at a closed gate (``paused``), or goes on after one."""

    paused: bool
    done: int  # pieces of build work finished so far (set-up, warm-up steps), for /status and the order of events


@dataclass(frozen=True)
class Heartbeat:
    """Sent from a side thread every ``heartbeat_interval_s``, busy or not."""

    worker_id: str
    sent_at: float  # time.time() in the worker
    job_id: str | None = None


@dataclass(frozen=True)
class MemoryReport:
    """Allocator statistics (MiB) after every job and after a cache clear."""

    worker_id: str
    allocated_mib: float
    reserved_mib: float
    peak_allocated_mib: float = 0.0
    device_total_mib: float = 0.0
    device_used_mib: float = 0.0
    simulated: bool = False
    jobs_done: int = 0
    after: str = "job"  # "job", "clear_cache" or "ready"


@dataclass(frozen=True)
class RawImage:
    """One image's pixels as ``PIL.Image.tobytes()`` gives them, plus its PNG text params.

    The pixels travel in ``data``, or (``data`` empty) in the shared-memory file ``shm`` of
    ``nbytes`` bytes (zitops.worker.pixel_shm); the agent maps that file in place of ``data``.
    """

    mode: str  # a PIL mode: "RGB", "RGBA" or "L"
    width: int
    height: int
    data: bytes | mmap.mmap  # an mmap only in the agent, once it attached the shm file
    params: dict[str, Any] = field(default_factory=dict)  # plain JSON types (see process.plain)
    shm: str | None = None
    nbytes: int = 0


@dataclass(frozen=True)
class Result:
    """A job's engine work succeeded; the agent encodes ``images`` and writes the files."""

    job_id: str
    images: tuple[RawImage, ...]
    seconds: float  # engine time in the worker; encoding is the agent's (info["encode_s"])
    info: dict[str, Any] = field(default_factory=dict)
    output_format: str = "png"  # png, jpeg or webp
    # The engine's own call, and when it returned, on CLOCK_MONOTONIC (time.monotonic()):
    # on Linux that clock is system-wide, so the agent subtracts it from its own
    # monotonic receive time to get the transfer stage; it never steps with NTP.
    engine_s: float = 0.0
    engine_done_at: float = 0.0
    engine_started_at: float = 0.0  # when the worker began the job's engine call (same clock)
    # When the worker handed the Result to its pipe (same clock): engine_done_at to here is the
    # worker's packing (pixels into shared memory, the info), here to the agent's receipt the pipe.
    sent_at: float = 0.0


@dataclass(frozen=True)
class Failure:
    """A job (or, with ``job_id`` None, the engine setup) raised."""

    job_id: str | None
    exc_type: str
    message: str
    traceback: str = ""
    memory: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Steer:
    """Steer a running job between two steps: STEER_CANCEL, STEER_INTERRUPT or STEER_PREVIEW.

    Read by the worker inside the pipeline's step callback; one for a job
    that already ended is ignored.
    """

    job_id: str
    action: str


STEER_CANCEL = "cancel"
"""Abandon the job: it fails with JobCancelled and the agent marks it cancelled."""
STEER_INTERRUPT = "interrupt"
"""Stop denoising and return images from the current latents (A1111's interrupt and skip)."""
STEER_PREVIEW = "preview"
"""Send a small preview image with each following Progress (a client asked for one)."""


@dataclass(frozen=True)
class Progress:
    """A running job finished denoising step ``step`` of ``steps``.

    ``preview`` is a small PNG of the first image, only at steps where the
    request or a Steer asked for one (decoding costs GPU time).
    """

    job_id: str
    step: int
    steps: int
    preview: bytes | None = None


ToWorker = Job | ClearCache | Shutdown | Assign | Steer | Gate
"""Messages the agent sends."""

FromWorker = Ready | Heartbeat | MemoryReport | Result | Failure | SpareReady | SparePreloaded | Progress | GateWait
"""Messages a worker sends."""
