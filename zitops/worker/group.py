"""A context-parallel group (``engine.parallel``): one worker, several ranks, one life.

The pool sees one worker per group, as for one GPU. That worker is rank 0:
before its engine's set-up it spawns ranks 1..N-1, and all of them join one
torch.distributed process group through a file store in a fresh temporary
directory (nccl on GPUs, gloo on the CPU). Every rank loads the model and
runs the same denoising on its slice of the sequence; rank 0 alone decodes
and answers the agent.

They start together: rank 0 reports Ready only once every rank has set up.
They die together: each rank dies with rank 0 (PR_SET_PDEATHSIG), and rank 0
exits with :data:`RANK_DIED_EXIT` as soon as any other rank ends, so the pool
sees one crash and restarts the whole group. A rank stuck in a collective
stops rank 0's job too, so the pool's hang and leak rounds, which kill rank
0, take the group down the same way.

Jobs reach ranks 1..N-1 over a pipe from rank 0; the stop decisions of each
step (interrupt, cancel) go over a gloo broadcast, so every rank stops at
the same step and no collective is left waiting. Torch-free at import.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize
from typing import Any

from zitops.engine.base import (
    STOP_CANCEL,
    STOP_INTERRUPT,
    GenerationResult,
    MemoryStats,
    ProgressFn,
)
from zitops.engine.request import GenerationRequest
from zitops.errors import EngineError
from zitops.parallel_settings import ParallelSettings

log = logging.getLogger("zitops.worker.group")

RANK_DIED_EXIT = 7
"""Rank 0's exit code when another rank of its group ended: the pool counts a crash and restarts the group."""
RANK_SETUP_FAILED_EXIT = 8
"""A rank 1..N-1's exit code when its engine could not be set up."""
GROUP_OOM_EXIT = 9
"""Any rank's exit code when a batch ran out of memory: the other ranks sit in a collective of the step it
left, so the batch cannot be split and retried as one worker does; the group restarts instead."""
RANK_DEATH_GRACE_S = 2.0
"""How long a job that failed in a collective waits to see whether a rank died (then the group exits)."""
STOPS = (None, STOP_INTERRUPT, STOP_CANCEL)
"""A step's stop decision as the small integer that is broadcast (its index here)."""


def rank_device(rank: int, on_gpu: bool) -> str:
    """The torch device of ``rank``: its own card of the group's (every rank sees them all, in order), or the CPU."""
    return f"cuda:{rank}" if on_gpu else "cpu"


def join(rank: int, world: int, store_dir: str, on_gpu: bool, timeout_s: float) -> Any:
    """Join the group's process group; return the gloo group that carries the step decisions."""
    import torch
    import torch.distributed as dist

    if on_gpu:
        seen = torch.cuda.device_count()
        if seen < world:
            raise EngineError(f"engine.parallel.degree {world}: this worker sees {seen} GPU(s) "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}); "
                              f"the pool gives each group {world}")
        torch.cuda.set_device(rank)
    store = dist.FileStore(os.path.join(store_dir, "store"), world)
    dist.init_process_group("nccl" if on_gpu else "gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    return dist.new_group(backend="gloo") if on_gpu else dist.group.WORLD


class StepSync:
    """A StepHook that makes every rank take rank 0's stop decision at each step.

    On rank 0 it wraps the job's hook (previews, progress, the agent's
    steering); on the other ranks there is none and it only listens.
    """

    def __init__(self, control: Any, inner: ProgressFn | None = None, leader: bool = True) -> None:
        self._control = control
        self._inner = inner
        self._leader = leader

    def __call__(self, step: int, total: int) -> None:
        """After step ``step``: the job's own progress, on rank 0."""
        if self._inner is not None:
            self._inner(step, total)

    def wants_preview(self, step: int) -> bool:
        """Rank 0's hook decides; the other ranks make no previews."""
        wants = getattr(self._inner, "wants_preview", None)
        return bool(wants(step)) if wants is not None else False

    def preview(self, step: int, image: Any) -> None:
        """Hand a preview on to rank 0's hook."""
        hand = getattr(self._inner, "preview", None)
        if hand is not None:
            hand(step, image)

    def stop(self) -> str | None:
        """Rank 0's decision (its hook's), the same on every rank."""
        import torch
        import torch.distributed as dist

        code = 0
        if self._leader:
            ask = getattr(self._inner, "stop", None)
            code = STOPS.index(ask() if ask is not None else None)
        box = torch.tensor([code], dtype=torch.int32)
        dist.broadcast(box, src=0, group=self._control)
        return STOPS[int(box.item())]


@dataclass
class Group:
    """Rank 0's side of a group: the other ranks' processes and pipes, the control group, the watcher."""

    world: int
    on_gpu: bool
    store_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="zitops-group-"))
    procs: list[BaseProcess] = field(default_factory=list)
    conns: list[Connection] = field(default_factory=list)
    control: Any = None
    closing: bool = False

    def start(self, config_data: dict[str, Any], worker_id: str, timeout_s: float, incarnation: int = 0) -> None:
        """Spawn ranks 1..N-1 and join the process group with them (they set up their engines meanwhile)."""
        ctx = multiprocessing.get_context("spawn")
        for rank in range(1, self.world):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=rank_main, name=f"zitops-worker-{worker_id}-rank{rank}",
                               args=(child, rank, self.world, self.store_dir, self.on_gpu, config_data, timeout_s,
                                     incarnation))
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        threading.Thread(target=self._watch, name="group-watch", daemon=True).start()
        self.control = join(0, self.world, self.store_dir, self.on_gpu, timeout_s)

    def _watch(self) -> None:
        # Any other rank's end ends the group: the pool restarts it whole.
        self.exit_if_a_rank_died(None)

    def exit_if_a_rank_died(self, wait_s: float | None) -> None:
        """Exit with RANK_DIED_EXIT once another rank has ended (waiting up to ``wait_s``; None: for ever).

        Also called when a job fails on a broken pipe or collective: the rank's death, not the job's
        error, is the news, so the agent requeues the job instead of failing it.
        """
        ended = wait([p.sentinel for p in self.procs], wait_s)
        if not ended or self.closing:
            return
        dead = next(p for p in self.procs if p.sentinel in ended)
        dead.join(0.1)
        sys.stderr.write(f"zitops group: {dead.name} ended (exit code {dead.exitcode}); "
                         "the whole group goes down\n")
        sys.stderr.flush()
        os._exit(RANK_DIED_EXIT)

    def replies(self) -> list[dict[str, Any]]:
        """One message from each other rank: its set-up report, or its memory after a job."""
        try:
            return [conn.recv() for conn in self.conns]
        except (EOFError, OSError):
            self.exit_if_a_rank_died(RANK_DEATH_GRACE_S)
            raise EngineError("a rank of the group closed its pipe") from None

    def send(self, message: Any) -> None:
        """A job (its request as a dict) or a command to every other rank."""
        for conn in self.conns:
            conn.send(message)

    def close(self) -> None:
        """On rank 0's exit: end the other ranks (no death for the watcher to report) and remove the store."""
        self.closing = True
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.join(10)
        shutil.rmtree(self.store_dir, ignore_errors=True)


class GroupEngine:
    """Rank 0's engine: each job goes to every rank, then runs here with the steps kept in step."""

    name = "diffusers"

    def __init__(self, inner: Any, group: Group, settings: ParallelSettings) -> None:
        self.inner = inner
        self.group = group
        self.settings = settings
        self.others: list[dict[str, Any]] = []  # the other ranks' last memory reports
        no_oom_split(inner, 0)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def setup(self, device: str) -> None:
        """Set up rank 0's engine, then wait until every rank has set up."""
        self.inner.setup(device)
        reports = self.group.replies()
        self.others = [r.pop("memory", {}) for r in reports]
        effective = getattr(self.inner, "effective", None)
        if isinstance(effective, dict):
            effective.setdefault("parallel", {})["ranks"] = [{"rank": 0, "device": device}, *reports]

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """The job on every rank; rank 0's images."""
        from zitops.engine.features.parallel import check_request

        check_request(self.settings, request)  # before any rank starts
        self.group.send(request.to_dict())
        try:
            result: GenerationResult = self.inner.generate(request, StepSync(self.group.control, progress))
        except (EngineError, RuntimeError, OSError, EOFError):
            self.group.exit_if_a_rank_died(RANK_DEATH_GRACE_S)  # a collective broken by a dead rank
            self.others = self.group.replies()
            raise
        except BaseException:
            self.others = self.group.replies()
            raise
        self.others = self.group.replies()  # each rank's memory once its part of the job is over
        return result

    def memory(self) -> MemoryStats:
        """The group's allocators, summed over its ranks: a leak on any rank shows in the sum."""
        mine = self.inner.memory()
        fields = ("allocated_mib", "reserved_mib", "peak_allocated_mib", "device_total_mib", "device_used_mib")
        total = {f: getattr(mine, f) + sum(float(o.get(f, 0.0)) for o in self.others) for f in fields}
        return MemoryStats(**total, simulated=mine.simulated)

    def after_warmup(self, shapes: list[tuple[int, int, int]] | None = None) -> dict[str, Any]:
        """Settle after the warm-up on every rank (each captures its own text encoder's CUDA graphs).

        ``shapes`` (the attention plans' sizes) are not passed on: a transformer forward
        outside a job would be rank 0's alone, and its split attention waits for every rank
        (engine.precision.attention_plans); a group's first request at a new caption length
        pays its plans instead.
        """
        del shapes
        self.group.send("after_warmup")
        settle = getattr(self.inner, "after_warmup", None)
        return dict(settle()) if settle is not None else {}

    def release_cache(self) -> None:
        """Release rank 0's cached blocks and ask the other ranks to do the same."""
        self.inner.release_cache()
        self.group.send("release_cache")

    def describe(self) -> dict[str, Any]:
        """Rank 0's description (it holds the group's parallel settings)."""
        return self.inner.describe()  # type: ignore[no-any-return]


def start_group(engine: Any, config: Any, config_data: dict[str, Any], worker_id: str, on_gpu: bool,
                incarnation: int = 0) -> Any:
    """``engine`` as rank 0 of its group for ``engine.parallel``, the other ranks spawned and joined.

    ``engine`` itself when the degree is 1.
    """
    settings = config.profile.engine.parallel
    if settings.degree <= 1:
        return engine
    group = Group(world=settings.degree, on_gpu=on_gpu)
    # Before multiprocessing joins a returning process's children (rank 0 after Shutdown): they would wait for
    # jobs for ever. A finalizer with an exit priority runs first; atexit would run after the join.
    Finalize(group, group.close, exitpriority=10)
    group.start(config_data, worker_id, config.profile.watchdog.startup_timeout_s, incarnation)
    return GroupEngine(engine, group, settings)


def no_oom_split(engine: Any, rank: int) -> None:
    """Make a batch that runs out of memory on ``engine`` end this rank (and so the group), not split."""
    run_batch = getattr(engine, "run_batch", None)
    if run_batch is None:
        return  # the fault engine: no real memory, no collectives

    def run_whole(request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        from zitops.engine.oom import BatchOutOfMemory

        try:
            return run_batch(request, progress)  # type: ignore[no-any-return]
        except BatchOutOfMemory as exc:
            sys.stderr.write(f"zitops group: rank {rank} ran out of memory ({exc}); a group cannot split a "
                             "batch, so it restarts\n")
            sys.stderr.flush()
            os._exit(GROUP_OOM_EXIT)

    engine.run_batch = run_whole


def _memory(engine: Any) -> dict[str, Any]:
    """A rank's allocator numbers as plain data for rank 0."""
    stats = engine.memory()
    return {f: float(getattr(stats, f)) for f in ("allocated_mib", "reserved_mib", "peak_allocated_mib",
                                                   "device_total_mib", "device_used_mib")}


def rank_main(conn: Connection, rank: int, world: int, store_dir: str, on_gpu: bool,
              config_data: dict[str, Any], timeout_s: float, incarnation: int = 0) -> None:
    """A rank 1..N-1: join, set up the same engine, then run each job rank 0 sends until its pipe closes.

    It sees the cards rank 0 was given (the environment is inherited), and uses the r-th.
    """
    from zitops.worker.lifeline import die_with_parent

    die_with_parent()
    device = rank_device(rank, on_gpu)
    try:
        control = join(rank, world, store_dir, on_gpu, timeout_s)
        from zitops.config import config_from_mapping
        from zitops.engine.factory import create_engine

        config = config_from_mapping(config_data, "worker config")
        engine: Any = create_engine(config, incarnation=incarnation)  # the fault engine's faults fire alike
        engine.decode = False  # rank 0 decodes; the latents are the same on every rank
        no_oom_split(engine, rank)
        engine.setup(device)
    except BaseException:
        sys.stderr.write(f"zitops group: rank {rank} could not set up:\n{traceback.format_exc()}")
        os._exit(RANK_SETUP_FAILED_EXIT)
    conn.send({"rank": rank, "device": device, "memory": _memory(engine)})
    sync = StepSync(control, leader=False)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg in ("release_cache", "after_warmup"):
            settle = getattr(engine, msg, None)
            if settle is not None:
                settle()
            continue
        try:
            engine.generate(GenerationRequest.from_dict(msg), sync)
        except Exception as exc:  # rank 0 fails the same way and reports it; keep serving
            log.warning("rank %d: job failed: %s: %s", rank, type(exc).__name__, exc)
        conn.send(_memory(engine))
