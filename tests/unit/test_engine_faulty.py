"""The fault-injecting engine and the OOM split, through the Engine interface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import agent_config, pixels, request
from zitops.config import FaultSettings
from zitops.engine.base import Engine
from zitops.engine.factory import create_engine
from zitops.engine.faulty import FaultyEngine
from zitops.errors import EngineError, OutOfMemory


def faulty(incarnation: int = 0, **faults: Any) -> FaultyEngine:
    engine = FaultyEngine(FaultSettings(job_seconds=0.0, **faults), explicit=True, incarnation=incarnation)
    engine.setup("cpu")
    return engine


def test_refuses_to_exist_unless_selected_explicitly() -> None:
    with pytest.raises(EngineError, match="engine.kind: faulty"):
        FaultyEngine(FaultSettings())


def test_factory_builds_the_selected_engine_without_loading(tmp_path: Path) -> None:
    eng = create_engine(agent_config(tmp_path, kind="faulty", faults={"crash_on_job": 3}), incarnation=2)
    assert isinstance(eng, FaultyEngine)
    assert eng.incarnation == 2 and not eng.armed
    real = create_engine(agent_config(tmp_path))
    assert real.name == "diffusers"
    assert getattr(real, "pipe", "missing") is None  # setup(device) loads, never __init__


def test_synthetic_images_are_deterministic_per_seed() -> None:
    engine: Engine = faulty()
    a = engine.generate(request((5, 6), width=64, height=48))
    b = engine.generate(request((6,), width=64, height=48))
    assert [im.size for im in a.images] == [(64, 48), (64, 48)]
    assert (pixels(a.images[1]) == pixels(b.images[0])).all()
    assert (pixels(a.images[0]) != pixels(a.images[1])).any()


def test_batch_oom_splits_until_it_fits_with_the_same_images() -> None:
    whole = faulty().generate(request((1, 2, 3, 4)))
    split = faulty(oom_above_batch=1).generate(request((1, 2, 3, 4)))
    assert split.seeds == (1, 2, 3, 4)
    assert split.info["oom_splits"] == 3  # 4 -> 2+2 -> 1+1+1+1
    for x, y in zip(whole.images, split.images, strict=True):
        assert (pixels(x) == pixels(y)).all()
    assert faulty(oom_above_batch=2).generate(request((1, 2, 3, 4))).info["oom_splits"] == 1


def test_single_image_oom_fails_with_advice() -> None:
    with pytest.raises(OutOfMemory, match="smaller size.*lowvram"):
        faulty(oom_above_batch=0).generate(request((1, 2)))


def test_raise_on_job_fails_only_that_job() -> None:
    engine = faulty(raise_on_job=2)
    engine.generate(request())
    with pytest.raises(EngineError, match="injected failure on job 2"):
        engine.generate(request())
    assert engine.generate(request()).info["job"] == 3


def test_leak_grows_allocated_and_survives_release_cache() -> None:
    engine = faulty(leak_mib_per_job=100.0, baseline_mib=1000.0)
    before = engine.memory()
    assert before.simulated and before.allocated_mib == 1000.0
    for _ in range(3):
        engine.generate(request((1, 2)))
    after = engine.memory()
    assert after.allocated_mib == pytest.approx(1300.0)
    assert after.reserved_mib > after.allocated_mib  # the allocator cache
    engine.release_cache()
    cleared = engine.memory()
    assert cleared.reserved_mib == pytest.approx(cleared.allocated_mib) == pytest.approx(1300.0)


def test_faults_fire_only_in_the_first_incarnation_unless_asked() -> None:
    later = faulty(incarnation=1, raise_on_job=1, oom_above_batch=0, leak_mib_per_job=50.0)
    later.generate(request((1, 2)))
    assert later.memory().allocated_mib == later.faults.baseline_mib
    always = faulty(incarnation=1, raise_on_job=1, every_incarnation=True)
    with pytest.raises(EngineError):
        always.generate(request())


def test_job_seconds_paces_progress() -> None:
    engine = FaultyEngine(FaultSettings(job_seconds=0.01), explicit=True)
    engine.setup("cpu")
    seen: list[tuple[int, int]] = []
    result = engine.generate(request((1, 2), steps=4), lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.seconds >= 0.02


def test_engine_modules_that_the_agent_imports_stay_torch_free() -> None:
    code = ("import sys\n"
            "import zitops.engine.factory, zitops.engine.faulty, zitops.engine.samplers\n"
            "import zitops.engine.output, zitops.engine.loader, zitops.engine.oom\n"
            "import zitops.commands.model, zitops.commands.generate\n"
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_real_leak_holds_real_host_memory_and_reports_it_unsimulated() -> None:
    from zitops.engine.faulty import FaultyEngine

    engine = FaultyEngine(FaultSettings(leak_mib_per_job=8, leak_memory="real", job_seconds=0), explicit=True)
    engine.setup("cpu")
    before = engine.memory()
    for seed in (1, 2):
        engine.generate(request(seeds=(seed,)))
    after = engine.memory()
    assert before.allocated_mib == 0 and after.simulated is False
    assert after.allocated_mib == after.reserved_mib == 16
    # The bytes are really held: two tensors of 8 MiB each, kept by the engine.
    held = engine._real._held
    assert [t.numel() for t in held] == [8 * 2**20] * 2 and all(int(t[-1]) == 1 for t in held)


def test_leak_from_job_leaves_the_first_jobs_unleaked() -> None:
    from zitops.engine.faulty import FaultyEngine

    engine = FaultyEngine(FaultSettings(leak_mib_per_job=100, leak_from_job=3, job_seconds=0), explicit=True)
    engine.setup("cpu")
    allocated = []
    for seed in range(4):
        engine.generate(request(seeds=(seed,)))
        allocated.append(engine.memory().allocated_mib - FaultSettings().baseline_mib)
    assert allocated == [0, 0, 100, 200]
