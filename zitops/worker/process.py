"""The spawned worker: one engine on one device, jobs in, results out.

Started by the agent's pool with the ``spawn`` context, so this module is
re-imported in a fresh interpreter. ``CUDA_VISIBLE_DEVICES`` is set before
anything imports torch; the engine is imported only after that.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zitops.worker.gate import BuildGate, BuildStopped
from zitops.worker.pixel_shm import PixelFiles
from zitops.worker.protocol import (
    ClearCache,
    Failure,
    FromWorker,
    Gate,
    Heartbeat,
    Job,
    MemoryReport,
    RawImage,
    Ready,
    Result,
    Shutdown,
    Steer,
    ToWorker,
)
from zitops.worker.steering import JobSteering
from zitops.worker.warmup import settle_heap

if TYPE_CHECKING:  # pragma: no cover
    from zitops.engine.loader import Preloaded

SETUP_FAILED_EXIT = 4
"""Exit code when the engine cannot be set up (the pool counts it as a crash)."""


class _Sender:
    """Serialises sends: the heartbeat thread and the main loop share one pipe."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, msg: FromWorker) -> None:
        """Send one message; exit at once if the agent is gone (no orphans)."""
        try:
            with self._lock:
                self._conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            os._exit(1)


class _State:
    """What the heartbeat thread reports: the job in progress, if any."""

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.jobs_done = 0


def _heartbeats(sender: _Sender, worker_id: str, state: _State, interval_s: float) -> None:
    # Runs in a daemon thread: a hung job keeps heartbeats going (the pool
    # catches that by job age); a wedged interpreter stops them.
    while True:
        sender.send(Heartbeat(worker_id=worker_id, sent_at=time.time(), job_id=state.job_id))
        time.sleep(interval_s)


def _configure_logging(config: Any, worker_id: str) -> Any:
    from zitops.logbook.logs import configure_logging, get_logger

    configure_logging(config.profile.logging, log_dir=Path(config.paths.log_dir), fmt=config.log_format,
                      process=f"worker-{worker_id}")
    return get_logger("zitops.worker").bind(worker_id=worker_id)


def _memory(engine: Any) -> dict[str, Any]:
    try:
        return dict(asdict(engine.memory()))
    except Exception:  # a broken allocator report must not hide the real failure
        return {}


def _generate(engine: Any, request: Any, steering: JobSteering | None) -> Any:
    # Both engines split an out-of-memory batch themselves
    # (zitops.engine.oom.generate_split_on_oom inside generate).
    try:
        return engine.generate(request, steering)
    finally:
        if steering is not None:
            steering.flush()  # the step events (previews encoded on a thread) go before the Result


def raw_image(image: Any, params: dict[str, Any], files: PixelFiles | None = None) -> RawImage:
    """A PIL image as raw pixels for the agent to encode (modes other than L/RGB/RGBA become RGB).

    ``files`` (a worker whose parent is the agent): the pixels go into a /dev/shm file the agent takes.
    """
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    nbytes = image.size[0] * image.size[1] * len(image.mode)
    name = files.put_with(nbytes, _pixel_writer(image)) if files is not None else None
    # None: no usable /dev/shm; the pixels go through the pipe
    return RawImage(mode=image.mode, width=image.size[0], height=image.size[1], data=b"" if name else image.tobytes(),
                    params=plain(params), shm=name, nbytes=nbytes)


def _pixel_writer(image: Any) -> Callable[[int], None]:
    """``write(fd)``: the image's raw pixels packed by Pillow straight into ``fd``.

    ``tobytes()`` packs into 64 KB pieces and joins them into a new 3 MB
    bytes that is then written out: two copies of a 1024x1024 image (2.6 ms
    on the dev box's CPU). Pillow's raw encoder writes the packed rows to the
    file itself, as ``Image.save`` does (ImageFile._save's encode_to_file).
    """
    def write(fd: int) -> None:
        from PIL import Image, ImageFile

        image.load()
        try:
            encoder = Image._getencoder(image.mode, "raw", image.mode)
        except (AttributeError, TypeError) as exc:  # a Pillow without it: put_with answers None, pixels go inline
            raise OSError(f"Pillow's raw encoder is not available: {exc}") from exc
        try:
            encoder.setimage(image.im, (0, 0, *image.size))
            if encoder.encode_to_file(fd, max(ImageFile.MAXBLOCK, image.size[0] * 4)) < 0:
                raise OSError("Pillow's raw encoder failed writing the pixel file")
        finally:
            encoder.cleanup()

    return write


def run_job(engine: Any, job: Job, steering: JobSteering | None = None, files: PixelFiles | None = None) -> Result:
    """Generate the job's images and hand back their pixels; the agent encodes and writes them.

    ``steering`` sends per-step Progress and applies the agent's Steer messages. ``files``: the pixels go
    through /dev/shm (None: inline in the Result).
    """
    from zitops.engine.request import GenerationRequest

    request = GenerationRequest.from_dict(job.request)
    started = time.monotonic()
    result = _generate(engine, request, steering)
    engine_done_at = time.monotonic()
    info = {"job_id": job.job_id, **dict(result.info)}
    images = tuple(raw_image(image, {**info, "seed": result.seeds[n] if n < len(result.seeds) else None}, files)
                   for n, image in enumerate(result.images))
    seconds = time.monotonic() - started
    return Result(job_id=job.job_id, images=images, seconds=seconds, output_format=request.output_format,
                  info=plain({**dict(result.info), "seeds": list(result.seeds),
                              "engine_seconds": result.seconds, "memory": _memory(engine)}),
                  engine_s=engine_done_at - started, engine_done_at=engine_done_at, engine_started_at=started)


def span_attributes(job: Job, config: Any) -> dict[str, Any]:
    """The generate span's attributes: size, steps, sampler, images, profile, precision."""
    r = job.request
    return {"zitops.job_id": job.job_id, "zitops.width": r.get("width"), "zitops.height": r.get("height"),
            "zitops.steps": r.get("steps"), "zitops.sampler": r.get("sampler"),
            "zitops.images": len(r.get("seeds") or ()) or 1, "zitops.profile": config.profile.name,
            "zitops.precision": config.profile.engine.precision, "zitops.attempt": job.attempt}


def plain(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as plain JSON types.

    Whatever crosses the pipe is unpickled in the agent, and unpickling a
    library's own type (torch's ``TorchVersion`` is a ``str`` subclass)
    imports that library there. The agent must never import torch.
    """
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


def _report(engine: Any, worker_id: str, jobs_done: int, after: str) -> MemoryReport:
    m = _memory(engine)
    return MemoryReport(
        worker_id=worker_id,
        allocated_mib=float(m.get("allocated_mib", 0.0)),
        reserved_mib=float(m.get("reserved_mib", 0.0)),
        peak_allocated_mib=float(m.get("peak_allocated_mib", 0.0)),
        device_total_mib=float(m.get("device_total_mib", 0.0)),
        device_used_mib=float(m.get("device_used_mib", 0.0)),
        simulated=bool(m.get("simulated", False)),
        jobs_done=jobs_done,
        after=after,
    )


NO_WARMUP = "none: Ready comes before any generation; the first job pays compile and warm-up"


def _warm_up(engine: Any, config: Any, device: str, gate: BuildGate | None = None) -> dict[str, Any]:
    """Run the profile's warm-up when ``engine.warmup`` wants it; the start-up report's part."""
    from zitops.worker import warmup

    compiled = bool(getattr(engine, "effective", {}).get("compile"))
    if not warmup.wanted(config.profile.engine.warmup, on_cuda=device != "cpu", compiled=compiled):
        return {}
    return warmup.run_warmup(engine, config.profile, warmup.warmup_plan(config.profile, config.limits.min_side,
                                                                     config.limits.max_side), gate)


def startup_phases(*, spawned_at: float | None, entered: float, imported: float, imports_s: float,
                   setup_s: float, marks: dict[str, float], ready: float,
                   standby: dict[str, Any] | None) -> dict[str, Any]:
    """The start-up report for Ready: wall-clock stamps (time.time()) and durations, in seconds.

    ``process_start_s`` is spawn (or, for a standby spare, the assignment) to
    the first line of :func:`worker_main`; ``init_s`` is config and logging;
    ``imports_s`` the engine's modules (about 0 for a spare, which imported
    them before it was assigned: its own figure is under ``standby``). A
    spare that had also loaded the model onto the host, and whose pipeline the
    engine took, starts as ``standby+preloaded``: ``engine_setup.load_s`` is
    about 0 and the load it paid earlier is ``standby.preload_s``.
    """
    origin = spawned_at if spawned_at is not None else entered
    setup = {f"{k}_s": round(v, 3) for k, v in sorted(marks.items())}
    setup["other_s"] = round(max(0.0, setup_s - sum(marks.values())), 3)
    return {
        "source": ("spawn" if standby is None else
                   "standby+preloaded" if standby.get("preloaded") else "standby"),
        "process_start_s": round(max(0.0, entered - spawned_at), 3) if spawned_at is not None else None,
        "init_s": round(max(0.0, imported - entered - imports_s), 3),
        "imports_s": round(imports_s, 3),
        "engine_setup_s": round(setup_s, 3),
        "engine_setup": setup,
        "warmup_s": None,
        "warmup": NO_WARMUP,
        "total_s": round(max(0.0, ready - origin), 3),
        **({"standby": standby} if standby is not None else {}),
    }


def worker_main(conn: Connection, worker_id: str, gpu: int | None, incarnation: int,
                config_data: dict[str, Any], spawned_at: float | None = None,
                standby: dict[str, Any] | None = None, preloaded: Preloaded | None = None,
                gate: bool | None = None, visible: str | None = None) -> None:
    """Entry point of a spawned worker (or an assigned standby spare); returns only to exit 0 after Shutdown.

    ``visible``: the ``CUDA_VISIBLE_DEVICES`` the pool chose for ``gpu`` (its NVML UUID; None: the index;
    a context-parallel group's worker: all its cards).

    ``preloaded`` is a spare's host copy of the pipeline, which the engine's setup uses instead of loading.
    ``gate`` (a hot spare that builds only while its slot is idle): the gate's state as it starts; it
    then waits at the pool's gate before its set-up and its warm-up's work (:mod:`zitops.worker.gate`).
    """
    entered = time.time()
    from zitops.worker.lifeline import die_with_parent

    die_with_parent()  # first: the agent may be killed at any moment from here on
    from zitops.worker.pixel_shm import sweep

    sweep(os.getppid())  # pixel files a killed predecessor (or a dead agent) left in /dev/shm
    from zitops.worker.preimport import device_environment, engine_modules, opened_device, preimport

    # Before any import of torch: this process sees exactly one GPU, or none.
    device_environment(gpu, visible)
    # Ctrl-C in a terminal and `systemctl kill -s HUP` reach the whole process
    # group; the agent decides when a worker stops and relays log tiers itself,
    # so the worker ignores both.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    from zitops.config import config_from_mapping

    config = config_from_mapping(config_data, "worker config")
    sender = _Sender(conn)
    state = _State()
    threading.Thread(
        target=_heartbeats, name="heartbeat", daemon=True,
        args=(sender, worker_id, state, config.profile.watchdog.heartbeat_interval_s),
    ).start()
    log = _configure_logging(config, worker_id)
    from zitops.logbook.logs import job_context
    from zitops.tracing import make_tracer

    # Joins each job's trace (Job.trace); the SDK flushes at exit. Off: nothing of OpenTelemetry is imported.
    tracer = make_tracer(config.tracing.endpoint, "zitops-worker")

    device = "cpu" if gpu is None else "cuda:0"
    imports_s = setup_s = 0.0
    pending: list[ToWorker] = []  # read by a job's step callback or the build gate, for this loop
    build_gate = BuildGate(conn, sender.send, gate, pending, log) if gate is not None else None
    from zitops.worker.prefetch import start_prefetch

    prefetch = start_prefetch(config.model) if preloaded is None else None  # the disk works while we import
    try:
        imports_s = preimport(engine_modules(config_data, gpu is not None))  # timed apart from the load
        imported = time.time()
        started = time.perf_counter()
        from zitops.engine import phases
        from zitops.engine.factory import create_engine
        from zitops.worker.bundle import import_bundle
        from zitops.worker.group import start_group

        with phases.phase("compile_bundle"):  # the fleet's compiled code, before anything compiles
            bundle = import_bundle(config, device)
        engine = create_engine(config, incarnation=incarnation, preloaded=preloaded)
        engine = start_group(engine, config, config_data, worker_id, gpu is not None, incarnation)  # parallel's ranks
        if build_gate is not None:
            build_gate.wait()  # the load onto the GPU is build work too
        engine.setup(device)
        setup_s = time.perf_counter() - started
        if standby is not None and preloaded is not None:
            standby["preloaded"] = preloaded.used
        warmed = _warm_up(engine, config, device, build_gate)
        if prefetch is not None:
            warmed["prefetch"] = prefetch
        if bundle is not None:
            from zitops.engine.precision.compile_bundle import compile_counters

            warmed["compile_bundle"] = {**bundle, "counters": compile_counters()}
        warmed["heap"] = settle_heap()  # last before Ready: the set-up's garbage is collected here, not in a job
    except BuildStopped:
        return  # a Shutdown while the spare was still building
    except BaseException as exc:  # report why, then die: the pool decides what next
        sender.send(Failure(job_id=None, exc_type=type(exc).__name__, message=str(exc),
                            traceback=traceback.format_exc()))
        log.error(f"engine setup failed: {type(exc).__name__}: {exc}")
        sys.stdout.flush()
        os._exit(SETUP_FAILED_EXIT)
    describe: dict[str, Any] = {}
    try:
        describe = plain(dict(engine.describe()))
    except Exception:  # describe is informational only
        describe = {}
    startup = startup_phases(spawned_at=spawned_at, entered=entered, imported=imported, imports_s=imports_s,
                             setup_s=setup_s, marks=phases.take(), ready=time.time(), standby=standby)
    startup.update(warmed)
    startup["device"] = opened_device(gpu)  # the card CUDA opened: the pool checks it is the one NVML reads
    if build_gate is not None:
        startup["build_gate"] = {"pauses": build_gate.pauses, "pieces": build_gate.done}
    log.info("worker startup", **startup)
    sender.send(Ready(worker_id=worker_id, pid=os.getpid(), incarnation=incarnation,
                      device=device, setup_s=setup_s, describe=describe, startup=startup))
    sender.send(_report(engine, worker_id, 0, "ready"))
    files = PixelFiles()
    try:
        while True:
            try:
                msg = pending.pop(0) if pending else conn.recv()
            except (EOFError, OSError):
                return  # the agent is gone: nobody wants our results
            if isinstance(msg, Steer | Gate):
                continue  # for a job that already ended; a spare's gate once it is built
            if isinstance(msg, Shutdown):
                return
            if isinstance(msg, ClearCache):
                try:
                    engine.release_cache()
                except Exception as exc:  # a failed clear is reported by the unchanged numbers
                    log.warning(f"release_cache failed: {type(exc).__name__}: {exc}")
                sender.send(_report(engine, worker_id, state.jobs_done, "clear_cache"))
            elif isinstance(msg, Job):
                state.job_id = msg.job_id
                span = tracer.start("zitops.generate", parent=msg.trace or None,
                                    attributes=span_attributes(msg, config) if tracer.enabled else None)
                try:
                    with job_context(job_id=msg.job_id, worker_id=worker_id, **tracer.log_fields(span)):
                        log.info("job started", attempt=msg.attempt)
                        result = run_job(engine, msg, JobSteering(conn, sender.send, msg.job_id, pending), files)
                except Exception as exc:  # the agent records it; the worker carries on
                    sender.send(Failure(job_id=msg.job_id, exc_type=type(exc).__name__,
                                        message=str(exc), traceback=traceback.format_exc(),
                                        memory=_memory(engine)))
                    tracer.end(span, attributes={"error.type": type(exc).__name__})
                else:
                    tracer.end(span)
                    sender.send(replace(result, sent_at=time.monotonic()))
                state.jobs_done += 1
                state.job_id = None
                sender.send(_report(engine, worker_id, state.jobs_done, "job"))
                files.prepare()  # the next job's pixel files, while the agent encodes this one's
    finally:
        files.close()
