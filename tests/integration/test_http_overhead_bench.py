"""benchmarks/http_overhead.py runs against a real agent and prints its stages and the overhead.

Only that it ran and printed: the numbers are for reading (CI prints them), never a pass mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_overhead_benchmark_runs_and_prints_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "http_overhead.py"), "--runs", "3", "--warmup", "1",
         "--size", "256", "--json", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    print(proc.stdout)
    assert "overhead_ms " in proc.stdout
    data = json.loads(out.read_text())
    assert set(data["stages_median_ms"]) == {"accept", "queue", "start", "engine", "pack", "transfer", "encode", "store",
                                              "wake", "respond", "total"}
    assert data["overhead_samples"] == 3 and data["overhead_ms"] is not None
