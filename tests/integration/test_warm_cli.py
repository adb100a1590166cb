"""``zitops warm`` with real spawned processes: the engine is set up in a child, the CLI never loads torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_imports import HEAVY, PROBE

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_warm_sets_the_engine_up_in_a_child_and_reports_the_cache(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "deploy"
    deployed = _cli("deploy", "--out", str(out), "--target", "systemd", "--model", str(tiny_model),
                    "--set", "generation.width=64", "--set", "generation.height=64", "--gpus", "auto")
    assert deployed.returncode == 0, deployed.stderr
    proc = _cli("warm", "--config", str(out / "config.yaml"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # The engine ran in another process: this one never imported the GPU stack.
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert report["pid"] > 0 and report["imports_s"] > 0 and report["engine_setup_s"] > 0
    assert report["cache_dir"] == str(out / "cache")
    # No CUDA here, so nothing compiles: the command says so instead of pretending to warm.
    assert report["device"] == "cpu" and report["compiled"] is False
    assert report["warmup"].startswith("nothing to precompile")
    assert set(report["cache_after"]) == {"files", "mib"}


def test_warm_without_a_config_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from zitops.cli import main; sys.exit(main())",
                           "warm"], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "ZITOPS_CONFIG"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[0] == ("error: no deployment found: pass --config FILE (the config.yaml "
                                                   "that `zitops deploy` rendered), set $ZITOPS_CONFIG, or run from "
                                                   "the deployment's directory")
