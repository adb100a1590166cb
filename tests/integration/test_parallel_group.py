"""Context parallel on the CPU: a real worker whose group of 2 ranks (gloo) makes the single-process image.

The tiny model has the real format and 2 heads, so Ulysses at degree 2 gives
each rank one head. The pixels must match the ungrouped worker's to PSNR
>= 40 dB (random weights: numerics, not quality).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_support import request
from tests.gpu_support import psnr
from tests.parallel_support import DEADLINE_S, Worker, gone, parallel_config, wait_for
from zitops.worker.group import RANK_DIED_EXIT
from zitops.worker.protocol import STEER_CANCEL, Failure, Job, Progress, Result, Shutdown, Steer

pytestmark = pytest.mark.slow
pytest.importorskip("torch")

SAME_PIXELS_DB = 40.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, Worker]]:
    tmp = tmp_path_factory.mktemp("parallel")
    single = Worker(parallel_config(tmp / "one", 1))
    group = Worker(parallel_config(tmp / "two", 2))
    yield single, group
    single.stop()
    group.stop()


def test_a_group_of_two_ranks_makes_the_single_process_image(pair: tuple[Worker, Worker]) -> None:
    single, group = pair
    par = group.ready.describe["effective"]["parallel"]
    assert (par["degree"], par["kind"], par["backend"], par["heads_per_rank"]) == (2, "ulysses", "gloo", 1)
    assert [r["rank"] for r in par["ranks"]] == [0, 1]
    job = request((5,), width=64, height=64, steps=3)
    _, one = single.run(job)
    result, two = group.run(job)
    assert result.info["parallel"]["degree"] == 2
    assert two[0].size == one[0].size == (64, 64)
    assert psnr(one[0], two[0]) >= SAME_PIXELS_DB
    _, other = single.run(request((6,), width=64, height=64, steps=3))
    assert psnr(one[0], other[0]) < SAME_PIXELS_DB  # the measure tells different images apart


def test_a_batch_with_guidance_is_masked_the_same_across_the_group(pair: tuple[Worker, Worker]) -> None:
    single, group = pair
    # A negative prompt of another length than the prompt: the model masks the shorter caption.
    job = request((3, 4), width=32, height=48, steps=2, guidance=2.0,
                  negative_prompt="blurry, low quality, watermark, text, extra fingers")
    _, one = single.run(job, "j2")
    _, two = group.run(job, "j2")
    assert len(two) == 2
    assert min(psnr(a, b) for a, b in zip(one, two, strict=True)) >= SAME_PIXELS_DB


def test_a_cancel_stops_every_rank_at_the_same_step(pair: tuple[Worker, Worker]) -> None:
    single, group = pair
    group.conn.send(Job(job_id="long", request=request((9,), steps=40).to_dict()))
    group.expect(Progress)
    group.conn.send(Steer(job_id="long", action=STEER_CANCEL))
    failure = None
    while failure is None:
        msg = group.conn.recv() if group.conn.poll(DEADLINE_S) else None
        assert msg is not None and not isinstance(msg, Result), "the cancelled job must not finish"
        failure = msg if isinstance(msg, Failure) else None
    assert failure.exc_type == "JobCancelled" and failure.job_id == "long"
    # Had rank 1 gone on denoising, the next job's collectives would meet the old job's and hang or differ.
    job = request((8,), width=48, height=32, steps=2)
    _, one = single.run(job, "after1")
    _, two = group.run(job, "after2")
    assert psnr(one[0], two[0]) >= SAME_PIXELS_DB


def test_a_group_with_the_warm_up_on_gets_ready_and_serves(tmp_path: Path) -> None:
    # The warm-up's generations run on every rank; the after-warm-up step builds no attention plans on
    # rank 0 alone (a forward outside a job would wait on the other ranks forever).
    group = Worker(parallel_config(tmp_path, 2, warmup=True))
    try:
        settled = group.ready.startup["after_warmup"]
        assert group.ready.startup["warmup"] and settled["attention_plans"] == {"shapes": [], "new_graphs": 0}
        result, images = group.run(request((5,), width=64, height=64, steps=2))
        assert len(images) == 1 and result.images[0].width == 64
    finally:
        group.stop()


def test_a_shutdown_ends_the_whole_group_cleanly(tmp_path: Path) -> None:
    group = Worker(parallel_config(tmp_path, 2))
    ranks = group.rank_pids()
    group.conn.send(Shutdown())
    # Rank 0 returns from worker_main and multiprocessing joins its children: they must not wait for jobs.
    group.proc.join(60)
    try:
        assert group.proc.exitcode == 0
        wait_for(lambda: all(gone(pid) for pid in ranks), 30, "no rank outlives its group")
    finally:
        group.stop()


def test_a_killed_rank_takes_its_group_down(tmp_path: Path) -> None:
    group = Worker(parallel_config(tmp_path, 2))
    try:
        ranks = group.rank_pids()
        assert len(ranks) == 1
        os.kill(ranks[0], signal.SIGKILL)
        wait_for(lambda: group.proc.exitcode is not None, 60, "rank 0 exits after rank 1 died")
        assert group.proc.exitcode == RANK_DIED_EXIT
    finally:
        group.stop()
    wait_for(lambda: all(gone(pid) for pid in ranks), 30, "no rank outlives its group")
