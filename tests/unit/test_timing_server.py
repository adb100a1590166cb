"""Per-request stage timings: the Server-Timing header, the JSON splice, the bench's paired overhead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runtime_support import runtime_config
from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.http.api_common import json_splice, server_timing, stage_timings
from zitops.bench.agent_http import overhead_summary, parse_server_timing, percentile
from zitops.bench.report import BenchReport, PathResult, ProfileRun, render_table
from zitops.engine.request import GenerationRequest


def _record(timings: dict[str, float | None] | None) -> JobRecord:
    info = {} if timings is None else {"timings": timings}
    return JobRecord(id="j1", status=JobStatus.SUCCEEDED, request=GenerationRequest(prompt="p", seeds=(1,), width=64, height=64, steps=2),
                     created_at=0.0, info=info)


def test_server_timing_round_trips_through_the_bench_parser() -> None:
    stages = {"queue": 0.0004, "engine": 0.8712, "transfer": 0.0031, "encode": 0.012, "total": 0.8903}
    header = server_timing(stages)
    assert header == "queue;dur=0.4, engine;dur=871.2, transfer;dur=3.1, encode;dur=12.0, total;dur=890.3"
    parsed = parse_server_timing(header)
    assert parsed == pytest.approx({k: round(v, 4) for k, v in stages.items()}, abs=1e-4)


def test_server_timing_parser_skips_what_it_cannot_read() -> None:
    parsed = parse_server_timing('cache;desc="hit", db;dur=53, app;dur="47.2";desc="x", bad;dur=oops, ,;dur=1')
    assert parsed == pytest.approx({"db": 0.053, "app": 0.0472})
    assert parse_server_timing(None) == {}


def test_stage_timings_take_the_jobs_stages_and_add_respond_and_total() -> None:
    record = _record({"queue": 0.001, "engine": 0.5, "transfer": None, "encode": 0.01, "done": 0.52})
    stages = stage_timings(record, started=0.0, respond_from=1e12)
    assert stages["engine"] == 0.5 and stages["queue"] == 0.001 and stages["encode"] == 0.01
    assert "transfer" not in stages and "done" not in stages  # unknown stages are left out, not zero
    assert stages["total"] > 0 and stages["respond"] < 0  # respond_from lies in the future here
    assert list(stage_timings(_record(None), 0.0, 0.0)) == ["respond", "total"]


def test_json_splice_makes_valid_json_with_fragments_untouched() -> None:
    rest = {"created": 1, "prompt": 'say "hi"\n海报 \\ \u0000'}
    body = json_splice("data", [[b'{"b64_json":"', b"QUJD", b'"}'], [b'{"url":', b'"http://x/1"', b"}"]], rest)
    data = json.loads(body)
    assert data == {"data": [{"b64_json": "QUJD"}, {"url": "http://x/1"}], **rest}
    assert json.loads(json_splice("images", [], {})) == {"images": []}
    assert json.loads(json_splice("images", [[b'"A"']], {})) == {"images": ["A"]}


def test_overhead_is_paired_per_request_with_stage_medians() -> None:
    e2e = [1.0, 2.0, 0.5, 0.9]
    stages = [{"engine": 0.98, "total": 0.995}, {"engine": 1.97, "total": 1.99}, {"engine": 0.49, "total": 0.497},
              {"total": 0.8}]  # the last request has no engine time: left out of the pairing
    out = overhead_summary(e2e, stages)
    assert out["overhead_samples"] == 3
    assert out["overhead_ms"] == pytest.approx(20.0) and out["overhead_all_ms"] == pytest.approx([20.0, 30.0, 10.0])
    assert out["overhead_p90_ms"] == pytest.approx(28.0)
    assert out["stages_median_ms"]["engine"] == pytest.approx(980.0)
    assert out["client_minus_server_total_ms"] == pytest.approx(7.5)
    assert overhead_summary([1.0], [{}])["overhead_ms"] is None
    assert percentile([3.0], 0.9) == 3.0 and percentile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_table_shows_paired_overhead_stages_and_the_labelled_cross_process_gap() -> None:
    run = ProfileRun("designer", {"width": 1024, "height": 1024, "steps": 8, "batch": 1})
    run.results["engine"] = PathResult("engine", 1, times_s=[0.70])
    agent = PathResult("agent", 1, times_s=[0.75])
    agent.extra.update(overhead_summary([0.75], [{"engine": 0.73, "encode": 0.01, "total": 0.745}]))
    run.results["agent"] = agent
    text = render_table(BenchReport(meta={"card": "cpu"}, runs=[run]))
    assert "paired per request): median 20.0 ms, p90 20.0 ms" in text
    assert "engine 730.0, encode 10.0, total 745.0" in text
    assert "engine path median (two processes, noisy): 50.0 ms" in text


def test_dispatcher_hands_a_waited_jobs_bytes_over_once_and_bounds_them(tmp_path: Path) -> None:
    from zitops.agent.dispatch import dispatcher as dmod
    from zitops.agent.dispatch import results

    d = dmod.Dispatcher(runtime_config(tmp_path), gpus=[None])
    try:
        for n in range(results.FRESH_JOBS + 2):
            d.results.keep_fresh(f"j{n}", (b"x" * 10,))
        assert d.encoded_images("j0") is None and d.encoded_images("j1") is None  # oldest evicted
        assert d.encoded_images("j2") == (b"x" * 10,)
        assert d.encoded_images("j2") is None  # handed over once
    finally:
        d.store.close()


def test_with_the_jobs_marks_the_stages_are_contiguous_and_add_up_to_total() -> None:
    marks = {"accepted": 10.002, "handed": 10.003, "engine_started": 10.006, "engine_done": 10.9, "sent": 10.902,
             "received": 10.905, "encoded": 10.92, "stored": 10.921}
    stages = stage_timings(_record({"engine": 0.5}), started=10.0, respond_from=10.923, marks=marks)
    assert list(stages) == ["accept", "queue", "start", "engine", "pack", "transfer", "encode", "store", "wake",
                            "respond", "total"]
    assert stages["pack"] == pytest.approx(0.002) and stages["transfer"] == pytest.approx(0.003)
    assert stages["accept"] == pytest.approx(0.002) and stages["start"] == pytest.approx(0.003)
    assert stages["engine"] == pytest.approx(0.894) and stages["wake"] == pytest.approx(0.002)
    assert sum(v for k, v in stages.items() if k != "total") == pytest.approx(stages["total"])
    partial = {k: v for k, v in marks.items() if k != "stored"}  # e.g. a fleet job: the persisted stages instead
    assert "accept" not in stage_timings(_record({"engine": 0.5}), 10.0, 10.923, marks=partial)
