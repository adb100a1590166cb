"""The dispatcher with real spawned workers.

The happy path (jobs, status, metrics, restore, two workers) runs the real
tiny pipeline; the fault engine comes in only where a fault is the point: a
hang that holds a job running, slow jobs, simulated allocator memory.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.engine_support import png_text
from tests.runtime_support import Runtime, request, runtime_config, wait_until
from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.storage.jobs import JobStore
from zitops.errors import AgentUnavailable, Conflict, NotFound, QueueFull

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = Runtime(runtime_config(tmp_path_factory.mktemp("rt")))
    try:
        yield runtime
    finally:
        runtime.close()


def _running_on(rt: Runtime, job_id: str) -> int:
    """Wait until ``job_id`` is on a worker; its pid."""
    def pid() -> int | None:
        return next((w["pid"] for w in rt.status()["workers"] if w["current_job"] == job_id), None)

    found: int = wait_until(pid, 30, what=f"job {job_id} on a worker")
    return found


def _hung(rt: Runtime, job_id: str) -> int:
    """Wait until the fault engine hangs in ``job_id``; the worker's pid."""
    pid = _running_on(rt, job_id)
    log = Path(rt.config.paths.log_dir) / "worker-w0.log"
    wait_until(lambda: log.is_file() and "fault: hanging on job" in log.read_text("utf-8", "replace"), 30,
               what="the worker to hang")
    return pid


def test_job_end_to_end_writes_images_under_server_names(rt: Runtime) -> None:
    rec = rt.submit(request(batch=2, seed=7))
    assert rec.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    rec = rt.wait(rec.id, 60)
    assert rec.status is JobStatus.SUCCEEDED, rec.error
    assert rec.images == (f"{rec.id}-0.png", f"{rec.id}-1.png")
    name, data = rt.lt.call(rt.d.image, rec.id, 1)
    assert name == rec.images[1] and data == (Path(rt.config.paths.output_dir) / name).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (64, 64)
        assert png_text(img)["model"] == "tiny (random weights)"
    assert not list(Path(rt.config.paths.output_dir).glob(".*.tmp"))
    with pytest.raises(NotFound, match="no image 2"):
        rt.lt.call(rt.d.image, rec.id, 2)
    assert rec.info["seeds"] == [7, 8] and rec.attempts == 1
    # The real pipeline ran: one transformer forward per step, on the CPU, in fp32.
    assert rec.info["transformer_forwards"] == 2 and rec.info["device"] == "cpu"
    assert rec.info["tiny"] is True and rec.info["precision"] == "fp32"


def test_status_and_metrics(rt: Runtime) -> None:
    rt.wait(rt.submit().id, 60)
    # The slot stays busy until the worker's post-job memory report arrives.
    wait_until(lambda: rt.status()["workers"][0]["state"] == "ready", 30, what="the worker's report")
    st = rt.status()
    assert st["model"]["note"] == "tiny random model: images are noise"
    assert st["engine"] == "diffusers" and st["profile"] == "designer"
    (w,) = st["workers"]
    assert w["state"] == "ready" and w["pid"] and w["jobs_done"] >= 1
    # The real engine on the CPU reports zeros, not simulated numbers.
    assert w["vram"]["allocated_mib"] == 0.0 and w["vram"]["simulated"] is False
    assert st["queue"] == {"depth": 0, "cap": 20, "running": 0}
    text = rt.lt.call(rt.d.metrics_text)
    assert 'zitops_jobs_total{outcome="succeeded"}' in text
    assert 'zitops_worker_allocated_mib{worker="w0"} 0.0' in text
    assert "zitops_job_seconds_count" in text


def test_idle_cache_clear_happens_once_per_idle_period(tmp_path: Path) -> None:
    # Simulated allocator memory is the fault engine's: reserved - allocated is 256 MiB after a job.
    rt = Runtime(runtime_config(tmp_path, kind="faulty", sets=["watchdog.idle_cache_clear_mib=100"]))
    ticks: list[int] = []
    try:
        # Every VRAM watch tick records its reading in the pool's history: count those calls
        # (two more than now means at least one whole tick ran after the clear).
        history = rt.d.pool.vram_history
        record = history.record

        def counted(gpus: Any, slots: Any, now: float | None = None) -> None:
            record(gpus, slots, now)
            ticks.append(1)

        rt.lt.call(setattr, history, "record", counted)
        rt.wait(rt.submit().id)
        (ev,) = wait_until(lambda: rt.events("cache_clear"), 20, what="an idle cache clear")
        assert ev["freed_mib"] > 100
        seen = len(ticks)
        wait_until(lambda: len(ticks) >= seen + 2, 20, what="two more VRAM watch ticks")
        assert len(rt.events("cache_clear")) == 1, "one clear per idle period, not one per tick"
        text = rt.lt.call(rt.d.metrics_text)
        assert 'zitops_recoveries_total{kind="cache_clear"} 1.0' in text
        assert 'zitops_worker_allocated_mib{worker="w0"} 2048.0' in text
        assert 'zitops_gpu_vram_total_mib{gpu="cpu"} 16384.0' in text
        (w,) = rt.status()["workers"]
        assert w["vram"]["baseline_mib"] == 2048.0 and w["vram"]["simulated"] is True
    finally:
        rt.close()


def test_a_queued_job_can_be_cancelled_a_final_one_cannot(tmp_path: Path) -> None:
    # Stopping a running job between steps needs the real pipeline's step hook: see
    # tests/integration/test_features_agent.py. Here the hang holds the worker, so the second job waits.
    rt = Runtime(runtime_config(tmp_path, faults={"hang_on_job": 1}))
    try:
        hung = rt.submit()
        waiting = rt.submit()
        pid = _hung(rt, hung.id)
        assert rt.lt.call(rt.d.get, waiting.id).status is JobStatus.QUEUED
        cancelled = rt.lt.run(rt.d.cancel(waiting.id))
        assert cancelled.status is JobStatus.CANCELLED
        os.kill(pid, signal.SIGKILL)  # end the hang: the job is requeued and runs on the next incarnation
        rec = rt.wait(hung.id)
        assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 2, rec.error
        with pytest.raises(Conflict, match="is succeeded; only queued jobs can be cancelled"):
            rt.lt.run(rt.d.cancel(hung.id))
        assert rt.lt.call(rt.d.get, waiting.id).status is JobStatus.CANCELLED
    finally:
        rt.close()


def test_queue_cap_refuses_before_writing(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, faults={"hang_on_job": 1}, sets=["queue.depth=2"]))
    try:
        first = rt.submit()
        pid = _hung(rt, first.id)  # nothing leaves the queue until the hang ends
        queued = [rt.submit(), rt.submit()]
        store_count = rt.lt.call(rt.d.store.count, JobStatus.QUEUED)
        with pytest.raises(QueueFull, match=r"queue full: 2 jobs waiting \(cap 2\)") as err:
            rt.submit()
        assert err.value.retry_after_s >= 1
        assert rt.lt.call(rt.d.store.count, JobStatus.QUEUED) == store_count == 2
        ready, reasons = rt.ready()
        assert not ready and any("queue full" in r for r in reasons)
        os.kill(pid, signal.SIGKILL)
        for rec in [first, *queued]:
            assert rt.wait(rec.id).status is JobStatus.SUCCEEDED
        assert rt.ready()[0]
    finally:
        rt.close()


def test_durable_restore_after_a_crash(tmp_path: Path) -> None:
    cfg = runtime_config(tmp_path)
    store = JobStore(cfg.paths.state_dir)
    ids = [store.add(request(seed=i)).id for i in range(3)]
    store.start(ids[0], "w0")  # it was running when the agent "died"; nothing is closed
    rt = Runtime(cfg, wait_ready=False)
    try:
        for job_id in ids:
            rec = rt.wait(job_id, 90)
            assert rec.status is JobStatus.SUCCEEDED, rec.error
        recs = [rt.lt.call(rt.d.get, i) for i in ids]
        assert recs[0].attempts == 2 and recs[1].attempts == 1
        started = [r.started_at for r in recs]
        assert all(s is not None for s in started)
        assert started == sorted(s for s in started if s is not None)  # creation order
    finally:
        rt.close()


def test_drain_finishes_running_keeps_queued_and_answers_waiters(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, faults={"job_seconds": 1.0}))
    try:
        async def submit_two_then_drain() -> tuple[list[JobRecord], dict[str, int], BaseException | None]:
            # submit dispatches at once, and drain stops dispatching before its first await: the
            # first job is running and the second queued when the drain starts, whatever the clock.
            jobs = [await rt.d.submit(request(seed=1)), await rt.d.submit(request(seed=2))]
            jobs = [rt.d.get(j.id) for j in jobs]
            waiter = asyncio.ensure_future(rt.d.wait(jobs[1].id, 30))
            await asyncio.sleep(0)  # the waiter registers before the drain answers it
            summary = await rt.d.drain(10)
            try:
                await asyncio.wait_for(waiter, 5)
            except AgentUnavailable as exc:
                return jobs, summary, exc
            return jobs, summary, None

        (running, queued), summary, answer = rt.lt.run(submit_two_then_drain())
        assert (running.status, queued.status) == (JobStatus.RUNNING, JobStatus.QUEUED)
        assert summary == {"running_left": 0, "queued_left": 1}
        assert isinstance(answer, AgentUnavailable) and "stays queued and runs after the restart" in str(answer)
        with pytest.raises(AgentUnavailable, match="draining"):
            rt.submit()
        ready, reasons = rt.ready()
        assert not ready and "draining: not accepting new jobs" in reasons
        assert rt.lt.call(rt.d.get, running.id).status is JobStatus.SUCCEEDED
        assert rt.lt.call(rt.d.get, queued.id).status is JobStatus.QUEUED
        assert rt.status()["workers"][0]["state"] == "stopped"
    finally:
        rt.close()


def test_two_workers_run_jobs_in_parallel_with_their_own_process(tmp_path: Path) -> None:
    # Two CPU slots stand in for two GPUs: the same slot/dispatch logic, no CUDA.
    rt = Runtime(runtime_config(tmp_path), gpus=[None, None])
    try:
        wait_until(lambda: all(w["state"] == "ready" for w in rt.status()["workers"]), 90,
                   what="both workers ready")

        async def submit_four() -> list[str]:
            # One loop callback: the first two go to the two idle workers at once, two wait.
            return [(await rt.d.submit(request(seed=i))).id for i in range(4)]

        ids = rt.lt.run(submit_four())
        recs = [rt.wait(job_id, 60) for job_id in ids]
        assert all(r.status is JobStatus.SUCCEEDED for r in recs), [r.error for r in recs]
        assert {r.worker for r in recs} == {"w0", "w1"}
        # The recorded stamps show the two workers holding a job each at the same time.
        a, b = recs[0], recs[1]
        assert a.worker != b.worker
        assert a.started_at is not None and b.started_at is not None
        assert a.finished_at is not None and b.finished_at is not None
        assert a.started_at < b.finished_at and b.started_at < a.finished_at
        pids = {w["pid"] for w in rt.status()["workers"]}
        assert len(pids) == 2
    finally:
        rt.close()
