"""Agent-side encoding with real workers: the worker runs job 2 while job 1's images are written.

The dispatcher's ``encode`` attribute is its documented test seam: these tests
swap in a gated, slow or failing encoder around the real ``encode_image``.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.engine_support import png_text
from tests.runtime_support import Runtime, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus
from zitops.engine.output import encode_image
from zitops.logbook.failures import FailureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = Runtime(runtime_config(tmp_path_factory.mktemp("enc")))
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture(autouse=True)
def real_encoder(rt: Runtime) -> Iterator[None]:
    yield
    rt.d.encode = encode_image


def _status(rt: Runtime, job_id: str) -> JobStatus:
    return rt.lt.call(rt.d.get, job_id).status


def _encode_count(rt: Runtime) -> float:
    line = next(ln for ln in rt.lt.call(rt.d.metrics_text).splitlines()
                if ln.startswith("zitops_encode_seconds_count "))
    return float(line.split()[1])


def _busy_with(rt: Runtime) -> str | None:
    return rt.lt.call(lambda: rt.d.pool.slots[0].job_id)


def test_worker_runs_the_next_job_while_the_agent_writes_images(tmp_path: Path) -> None:
    # Job 1's encode is held by a gate; job 2 hangs in the worker (the fault engine), so "the
    # worker is busy with job 2 while job 1 is still being written" is a state to wait for, not
    # a window to catch.
    rt = Runtime(runtime_config(tmp_path, faults={"hang_on_job": 2}))
    gate = threading.Event()
    gated: list[str] = []

    def held(image: Any, fmt: str, params: Mapping[str, Any]) -> bytes:
        if params["job_id"] == first.id:
            gated.append(first.id)
            gate.wait(20)  # bounded: a broken test fails, it does not hang
        return encode_image(image, fmt, params)

    try:
        rt.d.encode = held
        encoded_before = _encode_count(rt)
        try:
            first = rt.submit(request(seed=1))
            second = rt.submit(request(seed=2))
            wait_until(lambda: _busy_with(rt) == second.id, 30, what="the worker busy with job 2")
            assert gated == [first.id]
            assert _status(rt, first.id) is JobStatus.RUNNING
            out = Path(rt.config.paths.output_dir)
            assert not (out / f"{first.id}-0.png").exists()
            assert rt.lt.call(lambda: first.id in rt.d.results.pending)
        finally:
            gate.set()
        one = rt.wait(first.id)
        assert one.status is JobStatus.SUCCEEDED, one.error
        assert _busy_with(rt) == second.id  # job 1 turned succeeded while job 2 was still in the worker
        os.kill(rt.status()["workers"][0]["pid"], signal.SIGKILL)  # end the hang; job 2 runs again
        two = rt.wait(second.id)
        assert two.status is JobStatus.SUCCEEDED and two.attempts == 2, two.error
        assert one.info["encode_s"] > 0 and two.info["encode_s"] > 0
        with Image.open(io.BytesIO(rt.lt.call(rt.d.image, one.id, 0)[1])) as img:
            assert img.size == (64, 64)
            text = png_text(img)
            assert text["prompt"] == "a red fox" and text["seed"] == "1"
            assert "Seed: 1" in text["parameters"]
        assert _encode_count(rt) == encoded_before + 2
        assert "zitops_encodes_pending 0.0" in rt.lt.call(rt.d.metrics_text)
    finally:
        rt.close()


def test_encode_failure_fails_the_job_keeps_the_worker_and_leaves_no_files(rt: Runtime) -> None:
    pid = rt.status()["workers"][0]["pid"]

    def second_image_fails(image: Any, fmt: str, params: Mapping[str, Any]) -> bytes:
        if params["seed"] == 11:
            raise OSError("disk full (injected)")
        return encode_image(image, fmt, params)

    rt.d.encode = second_image_fails
    rec = rt.wait(rt.submit(request(seed=10, batch=2)).id)
    assert rec.status is JobStatus.FAILED
    assert rec.error == (f"writing images to {rt.config.paths.output_dir} failed: "
                         "OSError: disk full (injected)")
    out = Path(rt.config.paths.output_dir)
    assert not list(out.glob(f"{rec.id}-*")) and not list(out.glob(".*.tmp"))  # image 0 was removed
    fails = [f for f in FailureStore(Path(rt.config.paths.state_dir), Path(rt.config.paths.log_dir)).recent(50)
             if f["job_id"] == rec.id]
    assert fails and fails[0]["action"] == "fail" and "disk full" in str(fails[0]["message"])
    rt.d.encode = encode_image
    again = rt.wait(rt.submit(request(seed=12)).id)
    assert again.status is JobStatus.SUCCEEDED, again.error
    assert rt.status()["workers"][0]["pid"] == pid and not rt.events("crash")


def test_unwritable_output_dir_fails_the_job_with_a_clear_error(rt: Runtime) -> None:
    out = Path(rt.config.paths.output_dir)
    keep = out.with_name("output_kept")
    out.rename(keep)
    out.write_text("not a directory")  # unwritable even for root, unlike a chmod
    try:
        rec = rt.wait(rt.submit(request(seed=20)).id)
    finally:
        out.unlink()
        keep.rename(out)
    assert rec.status is JobStatus.FAILED
    assert rec.error.startswith(f"writing images to {out} failed: NotADirectoryError")
    assert rt.wait(rt.submit(request(seed=21)).id).status is JobStatus.SUCCEEDED
    assert rt.ready()[0]


def test_drain_waits_for_pending_encodes(tmp_path: Path) -> None:
    # The slow encoder is the fault; the fault engine keeps the worker's part quick.
    rt = Runtime(runtime_config(tmp_path, kind="faulty"))
    try:
        def slow(image: Any, fmt: str, params: Mapping[str, Any]) -> bytes:
            time.sleep(1.5)  # longer than the kill grace: only drain's own wait covers it
            return encode_image(image, fmt, params)

        rt.d.encode = slow
        rec = rt.submit()
        wait_until(lambda: rt.lt.call(lambda: rec.id in rt.d.results.pending), 10, what="the job to be encoding")
        assert _busy_with(rt) is None and _status(rt, rec.id) is JobStatus.RUNNING
        summary = rt.lt.run(rt.d.drain(10))
        assert summary["running_left"] == 0
        done = rt.lt.call(rt.d.get, rec.id)
        assert done.status is JobStatus.SUCCEEDED, done.error
        assert (Path(rt.config.paths.output_dir) / f"{rec.id}-0.png").is_file()
    finally:
        rt.close()
