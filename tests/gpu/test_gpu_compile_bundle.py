"""Compile once per fleet on a GPU: a bundle exported by one process makes a fresh one compile nothing.

`zitops warm --export` on deployment A (the tiny model, compiled on cuda:0,
its own empty cache), then `zitops warm --import` on deployment B with
another empty cache: B loads the bundle and inductor's counters show no FX
graph compiled (every graph a cache hit), Triton kernels included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import tiny_model_dir
from zitops.bench.agent_http import write_config
from zitops.profile import load_profile

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]


def _warm(root: Path, *extra: str) -> dict[str, Any]:
    profile = load_profile("designer", ["engine.compile=true", "generation.width=256", "generation.height=256",
                                        "generation.steps=2"])
    config = write_config(profile, str(tiny_model_dir()), root, 7860, cache_dir=root / "cache", state_dir=root / "state")
    proc = subprocess.run([sys.executable, "-c", "from zitops.cli import main; main()", "warm", "--config",
                           str(config), "--json", *extra], capture_output=True, text=True, timeout=800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_an_exported_bundle_makes_a_second_process_compile_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / "fleet.zcc"
    first = _warm(tmp_path / "a", "--export", str(bundle))
    assert first["device"] == "cuda:0" and first["compiled"] is True
    assert first["counters"]["fxgraph_miss"] > 0 and bundle.is_file()
    second = _warm(tmp_path / "b", "--import", str(bundle))
    print(f"gpu compile bundle: {bundle.stat().st_size / 2**20:.1f} MiB; first warm {first['warmup_s']} s "
          f"{first['counters']}; imported warm {second['warmup_s']} s {second['counters']}")
    assert second["compile_bundle"]["status"] == "loaded", second["compile_bundle"]
    assert second["counters"]["fxgraph_miss"] == 0 and second["counters"]["fxgraph_hit"] > 0, second["counters"]
