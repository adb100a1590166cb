"""The bench's numbers, table and JSON (torch-free), and its option parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zitops.bench.core import (
    BenchOptions,
    bench_profile,
    parse_batches,
    parse_paths,
    parse_samplers,
)
from zitops.bench.report import BenchReport, PathResult, ProfileRun, render_table
from zitops.errors import InvalidRequest
from zitops.profile import SAMPLERS, load_profile


def test_seconds_per_image_is_the_median_call_divided_by_the_batch() -> None:
    r = PathResult("engine", batch=4, times_s=[2.0, 9.0, 2.4])
    assert r.s_per_image == pytest.approx(0.6)
    assert r.images_per_min == pytest.approx(100.0)
    assert PathResult("engine", batch=1).s_per_image is None


def _run() -> ProfileRun:
    run = ProfileRun("designer", {"width": 1024, "height": 1024, "steps": 8, "batch": 1})
    run.results["baseline"] = PathResult("baseline", 1, times_s=[1.35, 1.36, 1.34], peak_vram_mib=22 * 1024)
    run.results["engine"] = PathResult("engine", 1, times_s=[0.70, 0.71, 0.69], setup_s=12.0, warmup_s=40.0)
    run.results["agent"] = PathResult("agent", 1, times_s=[0.72, 0.73, 0.74],
                                      extra={"overhead_ms": 21.5, "overhead_p90_ms": 24.0,
                                             "stages_median_ms": {"engine": 705.0, "encode": 12.0}})
    run.batch_sweep = [{"batch": 1, "images_per_min": 80.0}, {"batch": 2, "images_per_min": 91.0},
                       {"batch": 4, "images_per_min": 88.0}, {"batch": 8, "error": "OutOfMemory: x"}]
    return run


def test_speedup_overhead_and_best_batch() -> None:
    d = _run().to_dict()
    assert d["paths"]["baseline"]["speedup"] == pytest.approx(1.0)
    assert d["paths"]["engine"]["speedup"] == pytest.approx(1.35 / 0.70, rel=1e-3)
    assert d["paths"]["baseline"]["peak_vram_gib"] == pytest.approx(22.0)
    # The overhead is the agent path's own paired figure; the cross-process gap is reported apart.
    assert d["agent_overhead_ms"] == pytest.approx(21.5) and d["agent_overhead_p90_ms"] == pytest.approx(24.0)
    assert d["agent_minus_engine_path_ms"] == pytest.approx(30.0, abs=0.1)
    assert d["agent_stages_median_ms"]["encode"] == pytest.approx(12.0)
    assert d["best_batch"] == 2


def test_no_overhead_without_the_agents_paired_figure() -> None:
    run = _run()
    del run.results["engine"]
    assert run.engine_path_gap_ms() is None and run.to_dict()["agent_minus_engine_path_ms"] is None
    assert run.agent_overhead_ms() == pytest.approx(21.5)  # paired: needs no engine path
    run.results["agent"].extra.clear()
    assert run.agent_overhead_ms() is None and run.to_dict()["agent_overhead_ms"] is None


def test_table_names_card_paths_and_failures(tmp_path: Path) -> None:
    report = BenchReport(meta={"card": "NVIDIA H200", "model": "full-random", "date": "2026-11-26"})
    run = _run()
    run.results["agent"] = PathResult("agent", 1, error="bench agent exited 1")
    report.runs.append(run)
    text = render_table(report)
    assert "NVIDIA H200" in text and "plain diffusers" in text and "zitops engine" in text
    assert "failed: bench agent exited 1" in text
    assert "best batch: 2" in text and "1.93x" in text
    data = json.loads(report.write_json(tmp_path / "sub" / "r.json").read_text())
    assert data["card"] == "NVIDIA H200" and data["runs"][0]["paths"]["agent"]["error"]


def test_parse_paths_keeps_canonical_order_and_refuses_unknown() -> None:
    assert parse_paths("agent, baseline") == ("baseline", "agent")
    with pytest.raises(InvalidRequest, match="baseline, engine, agent"):
        parse_paths("engine,gpu")


def test_parse_samplers_and_batches() -> None:
    assert parse_samplers("all") == SAMPLERS
    assert parse_samplers("euler,heun") == ("euler", "heun")
    with pytest.raises(InvalidRequest, match="ddim"):
        parse_samplers("ddim")
    assert parse_batches("1,2,4") == (1, 2, 4)
    for bad in ("0", "a,b", "", "17"):
        with pytest.raises(InvalidRequest, match="--batch-sweep"):
            parse_batches(bad)


def test_bench_profile_raises_max_batch_for_the_sweep() -> None:
    prof = load_profile("designer")
    assert bench_profile(prof, BenchOptions()) is prof
    wider = bench_profile(prof, BenchOptions(batch_sweep=(1, 8)))
    assert wider.engine.max_batch == 8 and prof.engine.max_batch == 4


def test_table_shows_restart_cost_and_agent_memory() -> None:
    run = _run()
    run.results["agent"].extra.update(restart_s=24.3, device_used_mib=22 * 1024)
    text = render_table(BenchReport(meta={"card": "NVIDIA H100 80GB HBM3"}, runs=[run]))
    assert "agent restart (spawn to ready + first job): 24.3 s" in text
    assert "22.00 GiB" in text and "NVIDIA H100" in text
