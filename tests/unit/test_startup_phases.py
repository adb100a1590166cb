"""Start-up phase reports, the standby spare's import list, phase marks and the cached bench tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zitops.config import config_from_mapping, config_to_dict
from zitops.engine import phases
from zitops.profile import load_profile
from zitops.worker.preimport import COMPILE_MODULES, engine_modules
from zitops.worker.process import NO_WARMUP, startup_phases


def _config_data(kind: str, *, inner: str = "synthetic", compile_: bool = False) -> dict:
    profile = load_profile("designer", [f"engine.compile={str(compile_).lower()}"])
    paths = {k: f"/nonexistent/{k}" for k in ("state_dir", "log_dir", "output_dir", "cache_dir")}
    cfg = config_from_mapping({"profile": profile.model_dump(mode="json"), "paths": paths,
                               "engine": {"kind": kind, "faults": {"inner": inner}}}, "test config")
    return config_to_dict(cfg)


def test_spawned_start_phases_add_up_to_no_more_than_the_total() -> None:
    s = startup_phases(spawned_at=100.0, entered=100.4, imported=102.0, imports_s=1.5, setup_s=3.0,
                       marks={"load": 2.0}, ready=105.1, standby=None)
    assert s["source"] == "spawn" and s["process_start_s"] == 0.4
    assert s["imports_s"] == 1.5 and s["init_s"] == 0.1
    assert s["engine_setup"] == {"load_s": 2.0, "other_s": 1.0}
    assert s["total_s"] == 5.1
    assert s["process_start_s"] + s["init_s"] + s["imports_s"] + s["engine_setup_s"] <= s["total_s"]
    assert s["warmup_s"] is None and s["warmup"] == NO_WARMUP and "standby" not in s


def test_standby_start_reports_the_spare_and_never_a_negative_phase() -> None:
    # Clocks of two processes: a stamp may come out a hair early; a phase is never negative.
    s = startup_phases(spawned_at=10.0, entered=9.999, imported=10.01, imports_s=0.0, setup_s=0.5,
                       marks={"build": 0.7}, ready=10.6, standby={"pid": 7, "imports_s": 6.8, "idle_s": 30.0})
    assert s["source"] == "standby" and s["standby"]["pid"] == 7
    assert s["process_start_s"] == 0.0 and s["engine_setup"]["other_s"] == 0.0
    assert all(v is None or v >= 0 for k, v in s.items() if k.endswith("_s"))


def test_without_a_spawn_stamp_the_total_counts_from_the_worker_entry() -> None:
    s = startup_phases(spawned_at=None, entered=1.0, imported=2.0, imports_s=0.5, setup_s=1.0, marks={},
                       ready=3.5, standby=None)
    assert s["process_start_s"] is None and s["total_s"] == 2.5


def test_spare_imports_follow_the_engine_kind() -> None:
    faulty = engine_modules(_config_data("faulty"))
    assert "zitops.engine.faulty" in faulty and "torch" not in faulty  # fast spares for the fault engine
    real = engine_modules(_config_data("diffusers"))
    assert "torch" in real and "diffusers:ZImagePipeline" in real
    assert not set(COMPILE_MODULES) & set(real)
    assert set(COMPILE_MODULES) <= set(engine_modules(_config_data("diffusers", compile_=True)))
    assert "torch" in engine_modules(_config_data("faulty", inner="diffusers"))


def test_a_cpu_worker_imports_the_compiler_only_when_it_will_compile() -> None:
    # The engine compiles on the CPU only with engine.compile_on_cpu: inductor's imports are seconds spent for nothing.
    compiled = _config_data("diffusers", compile_=True)
    assert not set(COMPILE_MODULES) & set(engine_modules(compiled, on_gpu=False))
    compiled["profile"]["engine"]["compile_on_cpu"] = True
    assert set(COMPILE_MODULES) <= set(engine_modules(compiled, on_gpu=False))


def test_optional_modules_may_be_missing_required_ones_may_not() -> None:
    from zitops.worker.preimport import preimport

    assert preimport(["json", "?zitops_no_such_module", "json:dumps"]) >= 0
    with pytest.raises(ImportError):
        preimport(["zitops_no_such_module"])


def test_a_spare_sees_when_its_imports_initialised_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from zitops.worker.standby import cuda_initialized

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert cuda_initialized() is True
    fake.cuda.is_initialized = lambda: False
    assert cuda_initialized() is False
    monkeypatch.delitem(sys.modules, "torch")
    assert cuda_initialized() is False  # torch not imported at all


def test_phase_marks_sum_repeats_and_are_taken_once() -> None:
    phases.take()
    with phases.phase("load"):
        pass
    with phases.phase("load"):
        pass
    with pytest.raises(ValueError), phases.phase("levers"):
        raise ValueError("a failing step is still timed")
    marks = phases.take()
    assert set(marks) == {"load", "levers"} and all(v >= 0 for v in marks.values())
    assert phases.take() == {}


def test_standby_knob_defaults_on_and_turns_off() -> None:
    assert load_profile("designer").watchdog.standby_worker is True
    assert load_profile("designer", ["watchdog.standby_worker=false"]).watchdog.standby_worker is False


def test_full_random_tokenizer_is_trained_once_then_loaded(tmp_path: Path) -> None:
    from zitops.engine.full import cached_tokenizer

    first = cached_tokenizer(tmp_path)
    (saved,) = (tmp_path / "tokenizers").iterdir()
    assert (saved / "tokenizer.json").is_file()
    stamp = (saved / "tokenizer.json").stat().st_mtime_ns
    second = cached_tokenizer(tmp_path)
    assert (saved / "tokenizer.json").stat().st_mtime_ns == stamp  # loaded, not written again
    prompt = "a poster 一幅 <|im_start|> neon"
    assert first(prompt).input_ids == second(prompt).input_ids
    assert second.pad_token == first.pad_token and second.chat_template == first.chat_template
    (saved / "tokenizer.json").write_text("{not json", "utf-8")  # damaged: trained and saved again
    third = cached_tokenizer(tmp_path)
    assert third(prompt).input_ids == first(prompt).input_ids
    assert json.loads((saved / "tokenizer.json").read_text("utf-8"))["model"]["type"] == "BPE"


def test_a_worker_hides_what_transformers_would_import_for_nothing() -> None:
    # In a fresh interpreter, as a worker starts: after preimport, transformers takes scikit-learn and
    # torchvision for absent (on a host that has them they were 2.9 s of a GPU worker's imports), and
    # an import of either fails as if it were not installed.
    probe = (
        "import importlib.util, json, sys\n"
        "from zitops.worker.preimport import UNUSED_MODULES, preimport\n"
        "preimport(['transformers'])\n"
        "from transformers.utils import import_utils as iu\n"
        "out = {'spec': [importlib.util.find_spec(n) is None for n in UNUSED_MODULES],\n"
        "       'slot': [n in sys.modules and sys.modules[n] is None for n in UNUSED_MODULES],\n"
        "       'transformers': [iu.is_sklearn_available(), iu.is_torchvision_available()]}\n"
        "try:\n"
        "    import sklearn\n"
        "    out['import'] = 'imported'\n"
        "except ImportError:\n"
        "    out['import'] = 'ImportError'\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"spec": [True, True], "slot": [True, True], "transformers": [False, False],
                    "import": "ImportError"}, seen
