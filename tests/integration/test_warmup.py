"""Warm-up before Ready: the plan is a pure function of the profile, and a worker runs it before Ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_support import Runtime, request, runtime_config
from zitops.agent.contract import JobStatus
from zitops.profile import load_profile
from zitops.worker.process import NO_WARMUP
from zitops.worker.warmup import SKIPPED, WarmupRun, wanted, warmup_plan


def test_auto_warms_a_compiled_engine_on_a_gpu_only() -> None:
    assert wanted("auto", on_cuda=True, compiled=True)
    assert not wanted("auto", on_cuda=True, compiled=False)
    assert not wanted("auto", on_cuda=False, compiled=True)
    assert wanted(True, on_cuda=False, compiled=False)
    assert not wanted(False, on_cuda=True, compiled=True)


def test_the_plan_covers_the_profiles_batch_a_second_size_and_the_profile_again() -> None:
    designer = load_profile("designer", [])
    # The profile's size comes back last: after the second size dynamo serves it from the
    # dynamic graph, which must have run there before the first request does (when the second
    # size compiled one: ``confirm``).
    assert warmup_plan(designer, 64, 2048) == (
        WarmupRun(1, 1024, 1024), WarmupRun(1, 1152, 960), WarmupRun(1, 1024, 1024, confirm=True))
    batched = load_profile("designer", ["generation.batch=4", "engine.max_batch=4"])
    assert warmup_plan(batched, 64, 2048) == (
        WarmupRun(4, 1024, 1024), WarmupRun(1, 1152, 960), WarmupRun(4, 1024, 1024, confirm=True),
        WarmupRun(1, 1024, 1024))
    # At the limits the second size steps the other way, and stays inside them.
    edge = load_profile("designer", ["generation.width=2048", "generation.height=64"])
    assert warmup_plan(edge, 64, 2048) == (
        WarmupRun(1, 2048, 64), WarmupRun(1, 1920, 128), WarmupRun(1, 2048, 64, confirm=True))


@pytest.fixture
def warmed(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(runtime_config(tmp_path, sets=["engine.warmup=true", "generation.batch=2", "engine.max_batch=2"]))
    try:
        yield rt
    finally:
        rt.close()


def test_the_worker_generates_before_it_reports_ready(warmed: Runtime) -> None:
    startup = warmed.status()["workers"][0]["startup"]
    # The report arrives inside Ready itself, so every run below finished before Ready was sent.
    runs = startup["warmup"]
    assert [(r["batch"], r["width"], r["height"]) for r in runs] == [
        (2, 64, 64), (1, 192, 128), (2, 64, 64), (1, 64, 64)]
    # No CUDA here: no text encoder graphs to capture, and cuDNN is not in play.
    # The attention plans ran through the real (tiny) transformer at the profile's batch and size.
    assert startup["after_warmup"] == {"text_graphs": [], "cudnn_benchmark": "off (not CUDA)",
                                       "attention_plans": {"shapes": [f"2x64x64@{n}" for n in (32, 64, 96, 128)],
                                                           "new_graphs": 0}}
    # Nothing compiles here, so the second size built no graph for the profile's size to confirm.
    assert runs[2] == {"batch": 2, "width": 64, "height": 64, "skipped": SKIPPED}
    ran = runs[:2] + runs[3:]
    assert all(r["seconds"] > 0 and r["steps"] == 2 for r in ran)
    assert startup["warmup_s"] >= sum(r["seconds"] for r in ran) - 0.01
    assert startup["total_s"] >= startup["warmup_s"]
    # The set-up's heap is collected and frozen before Ready, so no early job pays a full collection.
    assert startup["heap"]["frozen"] > 10_000 and startup["heap"]["seconds"] >= 0, startup["heap"]
    job = warmed.wait(warmed.submit(request(seed=3)).id)
    assert job.status is JobStatus.SUCCEEDED, job.error


def test_auto_on_the_cpu_reports_no_warmup(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path))
    try:
        startup = rt.status()["workers"][0]["startup"]
        assert startup["warmup"] == NO_WARMUP and startup["warmup_s"] is None
    finally:
        rt.close()
