"""Stage timings end to end: a real ``zitops agent`` (fault engine, noise pixels) on loopback.

Server-Timing on the OpenAI and A1111 routes, ``timings`` in the native job
JSON, the stage histograms in /metrics, and bodies that are still valid JSON
now that the base64 is spliced in rather than encoded by a JSON library.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from zitops.bench.agent_http import free_port, parse_server_timing, running_agent, write_config
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

JOB_SECONDS = 0.1
SETS = ["generation.width=256", "generation.height=256", "generation.steps=2", "queue.job_timeout_s=30"]
PROMPT = 'a "quoted" fox\n海报 \\ on a hill'
STAGES = {"accept", "queue", "start", "engine", "pack", "transfer", "encode", "store", "wake", "respond", "total"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("timing")
    port = free_port()
    engine = {"kind": "faulty", "faults": {"inner": "synthetic", "pixels": "noise", "job_seconds": JOB_SECONDS}}
    config = write_config(load_profile("designer", SETS), "tiny", tmp, port, cache_dir=tmp / "cache",
                          state_dir=tmp / "state", engine=engine)
    with running_agent(config, port, ready_timeout_s=60) as (url, _ready_s):
        yield url


def _check_stages(header: str | None, client_s: float) -> dict[str, float]:
    stages = parse_server_timing(header)
    assert set(stages) == STAGES, header
    assert all(v >= 0 for v in stages.values()), header
    # The fault engine sleeps JOB_SECONDS in the worker: that is the engine stage, not the agent's.
    assert stages["engine"] >= JOB_SECONDS * 0.9
    # Every millisecond accounted for: the stages are the gaps between consecutive marks.
    parts = sum(v for k, v in stages.items() if k != "total")
    assert parts == pytest.approx(stages["total"], abs=0.0007), header  # 11 values, each rounded to 0.1 ms
    assert stages["total"] <= client_s + 0.001
    return stages


def test_openai_route_sends_server_timing_and_valid_json(agent: str) -> None:
    body = {"prompt": PROMPT, "n": 2, "seed": 5, "response_format": "b64_json"}
    t0 = time.perf_counter()
    resp = httpx.post(f"{agent}/v1/images/generations", json=body, timeout=60)
    client_s = time.perf_counter() - t0
    assert resp.status_code == 200, resp.text[:300]
    _check_stages(resp.headers.get("server-timing"), client_s)
    data = resp.json()
    assert resp.headers["content-type"] == "application/json"
    assert [d["revised_prompt"] for d in data["data"]] == [PROMPT, PROMPT]
    assert data["size"] == "256x256" and data["output_format"] == "png" and data["created"] > 0
    images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in data["data"]]
    assert [im.size for im in images] == [(256, 256)] * 2 and images[0].tobytes() != images[1].tobytes()

    resp = httpx.post(f"{agent}/v1/images/generations", json={**body, "n": 1, "response_format": "url"},
                      timeout=60)
    assert resp.status_code == 200 and "total;dur=" in resp.headers["server-timing"]
    item = resp.json()["data"][0]
    assert item["revised_prompt"] == PROMPT
    fetched = httpx.get(item["url"], timeout=10)
    assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (256, 256)


def test_a1111_route_sends_server_timing_and_valid_json(agent: str) -> None:
    t0 = time.perf_counter()
    resp = httpx.post(f"{agent}/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 9, "batch_size": 2}, timeout=60)
    client_s = time.perf_counter() - t0
    assert resp.status_code == 200, resp.text[:300]
    _check_stages(resp.headers.get("server-timing"), client_s)
    data = resp.json()
    assert len(data["images"]) == 2 and data["parameters"]["prompt"] == PROMPT
    assert json.loads(data["info"])["all_seeds"] == [9, 10]
    assert Image.open(io.BytesIO(base64.b64decode(data["images"][1]))).size == (256, 256)
    resp = httpx.post(f"{agent}/sdapi/v1/txt2img", json={"prompt": "x", "send_images": False}, timeout=60)
    assert resp.status_code == 200 and resp.json()["images"] == [] and "engine;dur=" in resp.headers["server-timing"]


def test_native_job_json_has_timings_and_metrics_have_stage_histograms(agent: str) -> None:
    with httpx.Client(base_url=agent, timeout=30) as client:
        queued = client.post("/v1/jobs", json={"prompt": "a cat"}).json()
        assert "timings" in client.get(queued["url"]).json()  # None until the job has succeeded
        deadline = time.monotonic() + 30
        job = client.get(queued["url"]).json()
        while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.05)
            job = client.get(queued["url"]).json()
        assert job["status"] == "succeeded", job
        t = job["timings"]
        assert set(t) == {"queue", "start", "engine", "pack", "transfer", "encode", "done"}
        assert t["engine"] >= JOB_SECONDS * 0.9 and t["encode"] > 0 and t["transfer"] >= 0 and t["queue"] >= 0
        assert t["pack"] > 0  # the worker's own hand-over (its pixels into /dev/shm): never zero
        assert t["done"] >= t["queue"] + t["engine"] + t["encode"]
        metrics = client.get("/metrics").text

    def count(prefix: str) -> float:
        line = next(ln for ln in metrics.splitlines() if ln.startswith(prefix))
        return float(line.rsplit(" ", 1)[1])

    assert count('zitops_job_stage_seconds_count{stage="engine"}') >= 1
    assert count('zitops_job_stage_seconds_count{stage="transfer"}') >= 1
    assert count('zitops_job_stage_seconds_count{stage="pack"}') >= 1
    route = '/v1/images/generations'
    assert count(f'zitops_http_stage_seconds_count{{route="{route}",stage="overhead"}}') >= 1
    assert count('zitops_http_stage_seconds_count{route="/sdapi/v1/txt2img",stage="total"}') >= 1


def test_the_bench_config_carries_the_engine_section(tmp_path: Path) -> None:
    engine = {"kind": "faulty", "faults": {"pixels": "noise"}}
    path = write_config(load_profile("designer", []), "tiny", tmp_path, 1234, cache_dir=tmp_path,
                        state_dir=tmp_path, engine=engine)
    assert "pixels: noise" in path.read_text()
