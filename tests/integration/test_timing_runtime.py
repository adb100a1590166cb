"""The dispatcher with a real worker: stage timings in the job record, encoded bytes handed to waiters only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_support import Runtime, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus
from zitops.worker.pixel_shm import PREFIX, SHM_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = Runtime(runtime_config(tmp_path_factory.mktemp("timing"), faults={"job_seconds": 0.5}))
    try:
        yield runtime
    finally:
        runtime.close()


def test_a_waited_job_hands_its_bytes_over_once_and_records_its_stages(rt: Runtime) -> None:
    job = rt.submit(request(seed=3, batch=2))  # a 1 s job: the wait below starts long before it ends
    done = rt.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED
    blobs = rt.lt.call(rt.d.encoded_images, job.id)
    assert blobs is not None and len(blobs) == 2
    assert [(rt.d.output_dir / name).read_bytes() for name in done.images] == list(blobs)
    assert rt.lt.call(rt.d.encoded_images, job.id) is None
    t = done.info["timings"]
    assert t["engine"] >= 0.45 and t["queue"] >= 0 and t["transfer"] >= 0 and t["encode"] > 0
    assert t["done"] >= t["queue"] + t["engine"] + t["transfer"] + t["encode"]


def test_an_unwaited_job_keeps_nothing_in_memory(rt: Runtime) -> None:
    job = rt.submit(request(seed=4))
    wait_until(lambda: rt.lt.call(rt.d.get, job.id).status.final, 30, what="the job to finish")
    assert rt.lt.call(rt.d.get, job.id).status is JobStatus.SUCCEEDED
    assert rt.lt.call(rt.d.encoded_images, job.id) is None


def test_a_job_delivered_inline_writes_no_file_and_its_bytes_go_to_the_route(rt: Runtime) -> None:
    job = rt.submit(request(seed=5, batch=2))
    rt.lt.call(rt.d.deliver_inline, job.id)  # as a synchronous route that sends the images and keeps no files
    done = rt.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and len(done.images) == 2
    assert not any((rt.d.output_dir / name).exists() for name in done.images)
    assert not any(p.name.endswith(".tmp") for p in rt.d.output_dir.iterdir())
    blobs = rt.lt.call(rt.d.encoded_images, job.id)
    assert blobs is not None and [b[:8] for b in blobs] == [b"\x89PNG\r\n\x1a\n"] * 2
    rt.lt.call(rt.d.release_inline, job.id)
    assert rt.lt.call(rt.d.encoded_images, job.id) is None


def test_a_route_that_leaves_before_its_job_ends_gets_the_files_written(rt: Runtime) -> None:
    job = rt.submit(request(seed=6))
    rt.lt.call(rt.d.deliver_inline, job.id)
    rt.lt.call(rt.d.release_inline, job.id)  # timed out, or the client went, while the job ran
    done = rt.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert all((rt.d.output_dir / name).is_file() for name in done.images)  # a later poll finds them


def test_a_worker_makes_its_next_pixel_files_ahead_and_removes_them_when_it_stops(tmp_path: Path) -> None:
    runtime = Runtime(runtime_config(tmp_path, faults={"job_seconds": 0.0}))
    try:
        done = runtime.wait(runtime.submit(request(seed=7)).id)
        assert done.status is JobStatus.SUCCEEDED
        ours = f"{PREFIX}-{os.getpid()}-{runtime.status()['workers'][0]['pid']}-"
        # Made after the Result and the memory report went: wait for it, it is not there at once.
        wait_until(lambda: any(p.name.startswith(ours) for p in SHM_DIR.iterdir()), 30,
                   what="the next job's pixel file, made ahead")
    finally:
        runtime.close()  # Shutdown: the worker leaves as asked, and removes its files made ahead
    assert not [p.name for p in SHM_DIR.iterdir() if p.name.startswith(ours)]
