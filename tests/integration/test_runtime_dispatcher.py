"""The dispatcher with real spawned workers (fault engine, synthetic pixels).

Happy path, status and metrics, cancel, the queue cap, durable restore.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime_support import Runtime, request, runtime_config, wait_until  # noqa: E402

from zitops.agent.contract import JobStatus  # noqa: E402
from zitops.agent.jobs import JobStore  # noqa: E402
from zitops.errors import AgentUnavailable, Conflict, NotFound, QueueFull  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    cfg = runtime_config(tmp_path_factory.mktemp("rt"), sets=["watchdog.idle_cache_clear_mib=100"])
    runtime = Runtime(cfg)
    try:
        yield runtime
    finally:
        runtime.close()


def test_job_end_to_end_writes_images_under_server_names(rt: Runtime) -> None:
    rec = rt.submit(request(batch=2, seed=7))
    assert rec.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    rec = rt.wait(rec.id)
    assert rec.status is JobStatus.SUCCEEDED, rec.error
    assert rec.images == (f"{rec.id}-0.png", f"{rec.id}-1.png")
    path = rt.lt.call(rt.d.image_path, rec.id, 1)
    with Image.open(path) as img:
        assert img.size == (64, 64)
    assert not list(Path(rt.config.paths.output_dir).glob(".*.tmp"))
    with pytest.raises(NotFound, match="no image 2"):
        rt.lt.call(rt.d.image_path, rec.id, 2)
    assert rec.info["seeds"] == [7, 8] and rec.attempts == 1


def test_status_metrics_and_idle_cache_clear(rt: Runtime) -> None:
    time.sleep(0.6)  # let a clear still due from an earlier test happen first
    before = len(rt.events("cache_clear"))
    rt.wait(rt.submit().id)
    # reserved - allocated is 256 MiB after a job (simulated), over the 100 MiB threshold.
    ev = wait_until(lambda: rt.events("cache_clear")[before:], 10, what="an idle cache clear")
    assert ev[0]["freed_mib"] > 100
    time.sleep(1.2)  # two more watchdog intervals: one clear per idle period, not one per tick
    assert len(rt.events("cache_clear")) == before + 1
    st = rt.status()
    assert st["model"]["note"] == "tiny random model: images are noise"
    assert st["engine"] == "faulty" and st["profile"] == "designer"
    (w,) = st["workers"]
    assert w["state"] == "ready" and w["pid"] and w["jobs_done"] >= 2
    assert w["vram"]["baseline_mib"] == 2048.0 and w["vram"]["simulated"] is True
    assert st["queue"] == {"depth": 0, "cap": 20, "running": 0}
    text = rt.lt.call(rt.d.metrics_text)
    assert 'zitops_jobs_total{outcome="succeeded"}' in text
    assert 'zitops_recoveries_total{kind="cache_clear"}' in text
    assert 'zitops_worker_allocated_mib{worker="w0"} 2048.0' in text
    assert 'zitops_gpu_vram_total_mib{gpu="cpu"} 16384.0' in text
    assert "zitops_job_seconds_count" in text


def test_cancel_queued_but_not_running(rt: Runtime) -> None:
    slow = rt.submit(request(steps=10))  # 0.05 s per image, paced over steps
    waiting = rt.submit()
    cancelled = rt.lt.run(rt.d.cancel(waiting.id))
    assert cancelled.status is JobStatus.CANCELLED
    wait_until(lambda: rt.lt.call(rt.d.get, slow.id).status is not JobStatus.QUEUED, 10)
    if rt.lt.call(rt.d.get, slow.id).status is JobStatus.RUNNING:
        with pytest.raises(Conflict, match="only queued jobs can be cancelled"):
            rt.lt.run(rt.d.cancel(slow.id))
    assert rt.wait(slow.id).status is JobStatus.SUCCEEDED
    assert rt.lt.call(rt.d.get, waiting.id).status is JobStatus.CANCELLED


def test_queue_cap_refuses_before_writing(tmp_path: Path) -> None:
    cfg = runtime_config(tmp_path, faults={"job_seconds": 1.0}, sets=["queue.depth=2"])
    rt = Runtime(cfg)
    try:
        first = rt.submit()
        wait_until(lambda: rt.lt.call(rt.d.get, first.id).status is JobStatus.RUNNING, 10)
        queued = [rt.submit(), rt.submit()]
        store_count = rt.lt.call(rt.d.store.count, JobStatus.QUEUED)
        with pytest.raises(QueueFull, match=r"queue full: 2 jobs waiting \(cap 2\)") as err:
            rt.submit()
        assert err.value.retry_after_s >= 1
        assert rt.lt.call(rt.d.store.count, JobStatus.QUEUED) == store_count == 2
        ready, reasons = rt.ready()
        assert not ready and any("queue full" in r for r in reasons)
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
        started = time.monotonic()
        for job_id in ids:
            rec = rt.wait(job_id)
            assert rec.status is JobStatus.SUCCEEDED, rec.error
        recs = [rt.lt.call(rt.d.get, i) for i in ids]
        assert recs[0].attempts == 2 and recs[1].attempts == 1
        assert [r.started_at for r in recs] == sorted(r.started_at for r in recs)  # creation order
        assert time.monotonic() - started < 30
    finally:
        rt.close()


def test_drain_finishes_running_keeps_queued_and_answers_waiters(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, faults={"job_seconds": 1.0}))
    try:
        running, queued = rt.submit(), rt.submit()
        wait_until(lambda: rt.lt.call(rt.d.get, running.id).status is JobStatus.RUNNING, 10)
        waiter = asyncio.run_coroutine_threadsafe(rt.d.wait(queued.id, 30), rt.lt.loop)
        summary = rt.lt.run(rt.d.drain(10))
        assert summary == {"running_left": 0, "queued_left": 1}
        with pytest.raises(AgentUnavailable, match="stays queued and runs after the restart"):
            waiter.result(5)
        with pytest.raises(AgentUnavailable, match="draining"):
            rt.submit()
        ready, reasons = rt.ready()
        assert not ready and "draining: not accepting new jobs" in reasons
        assert rt.lt.call(rt.d.get, running.id).status is JobStatus.SUCCEEDED
        assert rt.lt.call(rt.d.get, queued.id).status is JobStatus.QUEUED
        assert rt.status()["workers"][0]["state"] == "stopped"
    finally:
        rt.close()


def test_two_workers_run_jobs_in_parallel_with_their_own_device(tmp_path: Path) -> None:
    # Two CPU slots stand in for two GPUs: the same slot/dispatch logic, no CUDA.
    rt = Runtime(runtime_config(tmp_path, faults={"job_seconds": 1.0}), gpus=[None, None])
    try:
        wait_until(lambda: all(w["state"] == "ready" for w in rt.status()["workers"]), 30)
        started = time.monotonic()
        recs = [rt.wait(r.id) for r in [rt.submit(request(seed=i)) for i in range(4)]]
        elapsed = time.monotonic() - started
        assert all(r.status is JobStatus.SUCCEEDED for r in recs)
        assert {r.worker for r in recs} == {"w0", "w1"}
        assert elapsed < 3.6  # 4 one-second jobs on 2 workers, not 4 s in a row
        pids = {w["pid"] for w in rt.status()["workers"]}
        assert len(pids) == 2
    finally:
        rt.close()
