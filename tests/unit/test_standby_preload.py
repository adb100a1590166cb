"""A standby spare that also loads the model onto the host: the decision, the hand-over, the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.engine_support import agent_config, pixels, request, settings, tiny_model_dir
from zitops.agent.workers import standby as agent_standby
from zitops.agent.workers.pool import Pool
from zitops.config import config_from_mapping, config_to_dict
from zitops.engine import phases
from zitops.engine.loader import (
    PRELOAD_HEADROOM,
    Preloaded,
    mem_available_bytes,
    preload_refusal,
    weights_bytes,
)
from zitops.worker.process import startup_phases

GIB = 2**30


class _Listener:
    """The pool's listener; these tests start no worker, so nothing is ever called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected listener call {name}")


def _pool(tmp: Path, *, model: str | None = None, kind: str = "diffusers", inner: str = "synthetic",
          sets: dict[str, Any] | None = None) -> Pool:
    data = config_to_dict(agent_config(tmp, kind=kind, faults={"inner": inner},
                                       model=model or str(tiny_model_dir())))
    for dotted, value in (sets or {}).items():
        section, key = dotted.split(".")
        data["profile"][section][key] = value
    return Pool(config_from_mapping(data, "test config"), [None], _Listener())


def test_the_memory_guard_wants_headroom_over_the_weights_less_what_other_spares_load() -> None:
    assert preload_refusal(10 * GIB, 15 * GIB) is None
    reason = preload_refusal(10 * GIB, 14 * GIB)
    assert reason is not None and "14.0 GiB" in reason and "10.0 GiB" in reason and f"{PRELOAD_HEADROOM:g} x" in reason
    pending = preload_refusal(10 * GIB, 30 * GIB, pending_bytes=20 * GIB)
    assert pending is not None and "20.0 GiB other spares are loading" in pending
    assert preload_refusal(1, None) == "MemAvailable is unreadable (/proc/meminfo)"


def test_mem_available_and_the_weights_are_read_from_disk(tmp_path: Path) -> None:
    available = mem_available_bytes()
    assert available is not None and available > 0
    assert weights_bytes(str(tiny_model_dir()), tmp_path) > 0


def test_spares_preload_by_default_and_not_where_it_cannot_help(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    plan = pool.standby._preload_plan()
    assert plan.state == "pending" and plan.reason is None and plan.config_data == pool._config_data
    assert plan.size == weights_bytes(str(tiny_model_dir()), tmp_path)
    assert _pool(tmp_path, kind="faulty", inner="diffusers").standby._preload_plan().state == "pending"
    for pool, why in [
        (_pool(tmp_path, sets={"watchdog.standby_preload": False}), "watchdog.standby_preload is false"),
        (_pool(tmp_path, kind="faulty"), "synthetic pixels"),
        (_pool(tmp_path, sets={"engine.offload": "model"}), "engine.offload is model"),
        (_pool(tmp_path, model="full-random"), "full-random"),
    ]:
        plan = pool.standby._preload_plan()
        # The spare is not even handed the config: it cannot load anything.
        assert (plan.state, plan.size, plan.config_data) == ("off", 0, None)
        assert plan.reason is not None and why in plan.reason, plan.reason


def test_too_little_host_memory_skips_the_preload_and_says_why_once(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    standby = _pool(tmp_path).standby
    size = weights_bytes(str(tiny_model_dir()), tmp_path)
    monkeypatch.setattr(agent_standby, "mem_available_bytes", lambda: int(size * 1.2))
    with structlog.testing.capture_logs() as logs:
        first, second = standby._preload_plan(), standby._preload_plan()
    assert first == second and first.state == "skipped" and first.config_data is None
    assert "MemAvailable" in str(first.reason)
    logged = [e for e in logs if e["event"] == "standby spares do not preload the model"]
    assert len(logged) == 1 and logged[0]["reason"] == first.reason
    monkeypatch.setattr(agent_standby, "mem_available_bytes", lambda: int(size * 2))
    assert standby._preload_plan().state == "pending"


def test_a_preloaded_pipeline_is_moved_not_loaded_and_gives_the_same_pixels(tmp_path: Path) -> None:
    from zitops.engine.diffusers_engine import DiffusersEngine

    model = str(tiny_model_dir())
    handle = DiffusersEngine.preload(settings(), model, tmp_path)
    assert handle is not None and handle.seconds > 0 and handle.model_path == Path(model)
    phases.take()
    engine = DiffusersEngine(settings(), model, state_dir=tmp_path, preloaded=handle)
    engine.setup("cpu")
    assert handle.used and handle.pipe is None and engine.preloaded is None  # no second host reference
    assert "load" in phases.take()  # the mark is there (about 0), so the report keeps its shape
    fresh = DiffusersEngine(settings(), model, state_dir=tmp_path)
    fresh.setup("cpu")
    assert engine.pipe is not fresh.pipe
    got = pixels(engine.generate(request((7,))).images[0])
    want = pixels(fresh.generate(request((7,))).images[0])
    assert got.std() > 0 and abs(got - want).max() == 0


def test_a_preload_in_other_dtypes_is_dropped_and_the_model_loaded_again(tmp_path: Path) -> None:
    from zitops.engine.diffusers_engine import DiffusersEngine

    model = str(tiny_model_dir())
    handle = DiffusersEngine.preload(settings(precision="bf16"), model, tmp_path)
    assert handle is not None
    engine = DiffusersEngine(settings(), model, state_dir=tmp_path, preloaded=handle)
    engine.setup("cpu")
    assert not handle.used and handle.pipe is None
    assert any("does not match" in n for n in engine.notes)
    assert str(engine.pipe.transformer.dtype) == "torch.float32"
    assert DiffusersEngine.preload(settings(offload="model"), model, tmp_path) is None
    assert DiffusersEngine.preload(settings(), "full-random", tmp_path) is None


def test_the_fault_engine_hands_the_preload_to_its_inner_diffusers_engine(tmp_path: Path) -> None:
    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.factory import create_engine

    model = str(tiny_model_dir())
    config = agent_config(tmp_path, kind="faulty", faults={"inner": "diffusers"}, model=model)
    handle = DiffusersEngine.preload(config.profile.engine, model, tmp_path)
    assert handle is not None
    engine = create_engine(config, incarnation=1, preloaded=handle)
    engine.setup("cpu")
    assert handle.used and engine.describe()["inner"]["engine"] == "diffusers"
    result = engine.generate(request((3,)))
    assert result.info["engine"] == "faulty" and pixels(result.images[0]).std() > 0


def test_a_handle_is_taken_once() -> None:
    pipe = object()
    handle = Preloaded(pipe, Path("/m"), "bf16", "bf16", 1.0)
    assert handle.take() is pipe and handle.used
    assert handle.take() is None and handle.used


def test_a_start_from_a_preloaded_spare_says_so() -> None:
    common: dict[str, Any] = dict(spawned_at=100.0, entered=100.1, imported=100.1, imports_s=0.0, setup_s=1.0,
                                  marks={"load": 0.0, "to_device": 0.9}, ready=101.2)
    preloaded = startup_phases(**common, standby={"pid": 1, "imports_s": 5.0, "idle_s": 1.0, "preload_s": 9.0,
                                                  "preloaded": True})
    assert preloaded["source"] == "standby+preloaded" and preloaded["standby"]["preload_s"] == 9.0
    assert preloaded["engine_setup"]["load_s"] == 0.0
    plain = startup_phases(**common, standby={"pid": 1, "imports_s": 5.0, "idle_s": 1.0, "preloaded": False})
    assert plain["source"] == "standby"
    assert startup_phases(**common, standby=None)["source"] == "spawn"
