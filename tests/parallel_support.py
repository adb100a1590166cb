"""Test support for context parallel (engine.parallel): a real spawned worker, its group, one job at a time.

The worker is started as the pool starts it (``start_child`` on ``worker_main``)
and spoken to over its pipe with the worker protocol, so a test sees what the
agent would: Ready once every rank has set up, a Result from rank 0, the
worker's exit when a rank dies.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tests.engine_support import tiny_model_dir
from zitops.agent.workers.spawn import sigkill, start_child
from zitops.config import config_to_dict
from zitops.engine.request import GenerationRequest
from zitops.profile import load_profile
from zitops.worker import pixel_shm
from zitops.worker.process import worker_main
from zitops.worker.protocol import Failure, Job, RawImage, Ready, Result, Shutdown

DEADLINE_S = 240.0
"""The longest a worker may take to answer (2 cores shared by many test processes)."""


def parallel_config(tmp: Path, degree: int, kind: str = "ulysses", *, model: str | None = None,
                    gpus: list[int] | None = None, **engine: Any) -> dict[str, Any]:
    """An agent config's data for a worker of ``degree`` ranks (1: no group) on the tiny model."""
    from tests.engine_support import agent_config

    base = agent_config(tmp, model=model or str(tiny_model_dir()))
    knobs = {"precision": "fp32", "vae_precision": "fp32", "compile": False, "warmup": False,
             "parallel": {"degree": degree, "kind": kind}, **engine}
    profile = load_profile("designer").model_copy(update={
        "engine": load_profile("designer").engine.model_validate(
            {**load_profile("designer").engine.model_dump(), **knobs})})
    data = config_to_dict(base.model_copy(update={"profile": profile}))
    if gpus is not None:
        data["gpus"] = gpus
    return data


class Worker:
    """One spawned worker (rank 0 of its group) and its pipe."""

    def __init__(self, config_data: dict[str, Any], gpu: int | None = None, visible: str | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.proc: BaseProcess
        self.conn: Connection
        self.proc, self.conn = start_child(ctx, worker_main, "zitops-worker-test",
                                           ("w0", gpu, 0, config_data, time.time(), None, None, None, visible))
        self.ready: Ready = self.expect(Ready)

    def expect(self, kind: type, deadline_s: float = DEADLINE_S) -> Any:
        """The next message of ``kind`` (others skipped); fails on a Failure, on EOF or at the deadline."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if not self.conn.poll(min(1.0, max(0.0, end - time.monotonic()))):
                continue
            msg = self.conn.recv()
            if isinstance(msg, Failure):
                raise AssertionError(f"worker failed: {msg.exc_type}: {msg.message}\n{msg.traceback}")
            if isinstance(msg, kind):
                return msg
        raise AssertionError(f"no {kind.__name__} from the worker within {deadline_s} s")

    def run(self, request: GenerationRequest, job_id: str = "j1") -> tuple[Result, list[Any]]:
        """One job; its Result and its images as PIL."""
        self.conn.send(Job(job_id=job_id, request=request.to_dict()))
        result: Result = self.expect(Result)
        return result, [image(raw) for raw in result.images]

    def rank_pids(self) -> list[int]:
        """The pids of ranks 1..N-1: rank 0's spawned children (not multiprocessing's resource tracker)."""
        assert self.proc.pid is not None
        return ranks_of(self.proc.pid)

    def stop(self) -> None:
        """Shutdown, then SIGKILL what is left; the ranks die with rank 0."""
        with contextlib.suppress(OSError):
            self.conn.send(Shutdown())
        self.proc.join(30)
        sigkill(self.proc)
        self.proc.join(10)
        self.conn.close()


def image(raw: RawImage) -> Any:
    """A RawImage (pipe or /dev/shm) as a PIL image."""
    from PIL import Image

    data = bytes(raw.data)
    if raw.shm:
        mapped = pixel_shm.attach(raw.shm, raw.nbytes)
        try:
            data = bytes(mapped)
        finally:
            mapped.close()
    return Image.frombytes(raw.mode, (raw.width, raw.height), data)


def ranks_of(pid: int) -> list[int]:
    """A worker's spawned ranks (its children started by multiprocessing's spawn, not its resource tracker)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(int(child))
            except OSError:
                continue
    return sorted(found)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (or is a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def wait_for(condition: Any, deadline_s: float, what: str) -> None:
    """Poll ``condition()`` until true, or fail naming ``what``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {deadline_s} s")

