"""``zitops bench`` end to end on the CPU with the tiny model: baseline, engine and a real agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.engine_support import tiny_model_dir

BENCH_TIMEOUT_S = 120


def _bench(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ZITOPS_STATE_DIR": str(tmp / "state")}
    cmd = [sys.executable, "-c", "from zitops.cli import main; main()", "bench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, env=env, check=False)


def test_bench_tiny_designer_all_paths_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = _bench(tmp_path, "--model", str(tiny_model_dir()), "--profile", "designer", "--width", "64",
                  "--height", "64", "--runs", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # A pipe gets one line per phase and one when it ends, never a carriage-return bar.
    assert "\r" not in proc.stderr
    for path in ("baseline: plain diffusers ZImagePipeline", "zitops engine", "agent over HTTP on 127.0.0.1"):
        assert f"[designer] {path} (3 calls) ..." in proc.stderr, proc.stderr[-2000:]
        assert f"[designer] {path}: done (3/3, " in proc.stderr, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["card"] == "cpu" and data["date"]
    run = data["runs"][0]
    assert run["params"]["width"] == 64 and run["params"]["steps"] == 8
    for path in ("baseline", "engine", "agent"):
        res = run["paths"][path]
        assert res["error"] is None, res
        assert len(res["times_s"]) == 2 and res["s_per_image"] > 0 and res["images_per_min"] > 0
        assert res["warmup_s"] is not None and res["speedup"] > 0
    # The agent's setup is its spawn-to-ready time, and a request costs at least the engine's work.
    assert run["paths"]["agent"]["setup_s"] > 0 and run["agent_overhead_ms"] is not None
    assert run["checks"]["agent_vs_engine"]["max_abs"] == 0.0
    assert run["checks"]["engine_vs_baseline"]["psnr_db"] > 30
    assert "zitops engine" in proc.stdout and "agent overhead" in proc.stdout
    # Paired overhead: each request's client time minus its own Server-Timing engine time.
    agent = run["paths"]["agent"]
    client_ms = [t * 1000.0 for t in agent["times_s"]]
    assert agent["extra"]["overhead_samples"] == 2
    assert all(0 <= o < c for o, c in zip(agent["extra"]["overhead_all_ms"], client_ms, strict=True))
    assert 0 <= run["agent_overhead_ms"] < max(client_ms) and run["agent_overhead_p90_ms"] >= 0
    stages = run["agent_stages_median_ms"]
    assert {"queue", "engine", "transfer", "encode", "respond", "total"} <= set(stages)
    assert 0 < stages["engine"] <= stages["total"] and run["agent_minus_engine_path_ms"] is not None
    assert "paired per request" in proc.stdout and "agent stages (median ms)" in proc.stdout
    # Every request's own stages, the untimed first one included (where a first request's extra goes).
    each = agent["extra"]["requests_ms"]
    assert len(each) == 1 + len(client_ms) and all(r["e2e"] >= r["total"] >= r["engine"] > 0 for r in each)


def test_bench_refuses_full_arch_without_gpu_and_bad_paths(tmp_path: Path) -> None:
    proc = _bench(tmp_path, "--arch", "full", "--device", "cpu")
    assert proc.returncode != 0 and "GPU" in proc.stderr and "Traceback" not in proc.stderr
    proc = _bench(tmp_path, "--paths", "engine,nope")
    assert proc.returncode != 0 and "baseline, engine, agent" in proc.stderr


def test_bench_compare_bf16_reports_the_fp8_deviation(tmp_path: Path) -> None:
    """lowvram (fp8; weight-only on the CPU) against the same request with fp8 off."""
    out = tmp_path / "out.json"
    proc = _bench(tmp_path, "--model", str(tiny_model_dir()), "--profile", "lowvram", "--width", "64", "--height",
                  "64", "--steps", "2", "--runs", "1", "--warmup", "0", "--paths", "engine", "--compare", "bf16",
                  "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(out.read_text())["runs"][0]
    assert run["paths"]["engine"]["extra"]["effective"]["fp8"]["mode"] == "weight_only"
    deviation = run["checks"]["fp8_vs_bf16"]
    assert 30 <= deviation["psnr_db"] < 999 and 0 < deviation["max_abs"] <= 0.25, deviation
    assert "fp8=false" in deviation["reference"] and "check fp8_vs_bf16" in proc.stdout


def test_bench_memory_cap_is_refused_on_the_cpu_and_with_the_agent_path(tmp_path: Path) -> None:
    proc = _bench(tmp_path, "--model", str(tiny_model_dir()), "--device", "cpu", "--paths", "engine",
                  "--memory-cap-gib", "8")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--memory-cap-gib caps a CUDA device's memory; the device here is cpu" in proc.stderr
    proc = _bench(tmp_path, "--model", str(tiny_model_dir()), "--device", "cuda:0", "--memory-cap-gib", "8")
    assert proc.returncode != 0 and "--paths engine" in proc.stderr and "Traceback" not in proc.stderr
