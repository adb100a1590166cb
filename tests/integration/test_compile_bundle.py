"""Compile once per fleet: `zitops warm --export` on one deployment, `--import` on a fresh one compiles nothing.

The tiny pipeline compiled on the CPU (``engine.compile_on_cpu``) stands in
for a GPU host; each deployment has its own empty cache directory, so the
second process can only hit what the bundle brought. "Compiled nothing" is
inductor's own counter: no FX graph cache miss (a miss is a real lowering
and code generation). A bundle made for another key (here: another torch and
GPU) is not loaded: the command says which part differs and compiles. One
compile in all (the first host's), so the module costs one CPU compile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_imports import HEAVY, PROBE
from zitops.engine.precision.compile_bundle import read_bundle, write_bundle

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SETS = ("--set", "engine.compile=true", "--set", "engine.compile_on_cpu=true", "--set", "engine.precision=fp32",
        "--set", "engine.vae_precision=fp32", "--set", "generation.steps=2", "--set", "generation.width=64",
        "--set", "generation.height=64", "--set", "limits.max_side=64")
"""64x64 only (limits pin the warm-up's second size to the first): one static graph set, no dynamic one."""


def _cli(*args: str, timeout: float = 1100) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _warm(root: Path, model: Path, *extra: str) -> dict[str, Any]:
    deployed = _cli("deploy", "--out", str(root), "--target", "systemd", "--model", str(model), "--gpus", "auto",
                    *SETS)
    assert deployed.returncode == 0, deployed.stderr
    proc = _cli("warm", "--config", str(root / "config.yaml"), "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    # The CLI never imported the GPU stack: the engine ran in warm's child.
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, dict[str, Any]]:
    """The first host: handed a bundle made for another torch, it compiles, says why, and exports its own."""
    root = tmp_path_factory.mktemp("bundle")
    foreign = root / "foreign.zcc"
    # Never loaded, so its blob need not be torch's: the key alone decides.
    write_bundle(foreign, {"torch": "2.0.0", "device": "cuda sm_80"}, b"never loaded")
    bundle = root / "fleet.zcc"
    report = _warm(root / "a", tiny_model, "--import", str(foreign), "--export", str(bundle))
    return bundle, report


def test_a_bundle_for_another_key_recompiles_and_says_why(exported: tuple[Path, dict[str, Any]]) -> None:
    _, report = exported
    found = report["compile_bundle"]
    assert report["compiled"] is True and found["status"] == "compile"
    assert "made for another key" in found["message"] and "torch: bundle '2.0.0'" in found["message"], found
    assert report["counters"]["fxgraph_miss"] > 0


def test_the_warm_exports_its_bundle_to_the_file_and_the_shared_dir(exported: tuple[Path, dict[str, Any]]) -> None:
    bundle, report = exported
    assert report["exported"]["exported"] == str(bundle)
    assert read_bundle(bundle)[1] == read_bundle(report["exported"]["path"])[1]
    assert Path(report["exported"]["path"]).parent.name == "bundles"


def test_the_warm_ups_attention_plans_compile_nothing(exported: tuple[Path, dict[str, Any]]) -> None:
    # The caption-length forwards after the warm-up build attention plans, not graphs: run under
    # inference_mode instead of the pipeline's no_grad they compiled two more (a probe, 2026-12-07).
    plans = exported[1]["after_warmup"]["attention_plans"]
    assert plans["shapes"] == [f"1x64x64@{n}" for n in (32, 64, 96, 128)] and plans["new_graphs"] == 0, plans


def test_an_imported_bundle_makes_a_fresh_process_compile_nothing(exported: tuple[Path, dict[str, Any]],
                                                                  tmp_path: Path, tiny_model: Path) -> None:
    bundle, _ = exported
    report = _warm(tmp_path / "b", tiny_model, "--import", str(bundle))
    assert report["compile_bundle"]["status"] == "loaded", report["compile_bundle"]
    counters = report["counters"]
    assert counters["fxgraph_miss"] == 0 and counters["fxgraph_hit"] > 0, counters
