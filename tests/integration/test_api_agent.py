"""The HTTP API against the real ``zitops agent`` on loopback, running the real tiny pipeline.

One agent without tokens serves most tests (module scope); a second one with
a tokens file proves auth end to end. The queue-limit and livez tests hold
the only worker in a hang (the fault engine), so a full queue is a fact, not
a race against the jobs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import webuiapi
import yaml
from PIL import Image

from tests.agent_process_support import AgentProcess
from tests.api_support import free_port
from tests.engine_support import png_text
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model, wait_until
from zitops.config import config_from_mapping, config_to_dict
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

TOKEN = "integration-token-0123456789abcdef"
SEED_CURL_BODY = '{ "prompt": "a ceramic coffee cup on a wooden table, natural lighting", "steps": 8, "scheduler": "simple", "cfg_scale": 7.0 }'
BRIEF_CURL_BODY = ('{"prompt": "a cat", "negative_prompt": "", "steps": 8, "width": 1024, "height": 1024, '
                   '"sampler_name": "DPM++ 2M SDE", "cfg_scale": 7}')
SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.depth=20",
        "queue.job_timeout_s=300", "queue.drain_timeout_s=10", "watchdog.heartbeat_interval_s=0.5"]
"""The examples send 1024x1024 batch 2 as users would; on two loaded cores that ran past 30 s, so the
job timeout (tested elsewhere) is generous here."""


class Agent(AgentProcess):
    """A real ``zitops agent`` on a free loopback port: the tiny pipeline, or the fault engine with ``faults``."""

    def __init__(self, tmp: Path, *, tokens: bool = False, faults: dict[str, Any] | None = None) -> None:
        # The real tiny pipeline, unless a fault is injected.
        engine: dict[str, Any] = {"kind": "diffusers"} if faults is None else {
            "kind": "faulty", "faults": {"inner": "synthetic", **faults}}
        data: dict[str, Any] = {
            "profile": load_profile("designer", SETS + (REAL_ENGINE_SETS if faults is None else [])
                                    ).model_dump(mode="json"),
            "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
            "engine": engine,
            "log_format": "json",
        }
        if faults is None:
            link_tiny_model(tmp / "state_dir")
        if tokens:
            tf = tmp / "tokens"
            tf.write_text(f"# test\n{TOKEN}\n")
            os.chmod(tf, 0o600)
            data["auth"] = {"tokens_file": str(tf)}
        super().__init__(tmp, data, {"Authorization": f"Bearer {TOKEN}"} if tokens else None)

    def hung_worker(self) -> int:
        """Wait until the fault engine hangs in a job; the hung worker's pid."""
        log = self.tmp / "log_dir" / "worker-w0.log"
        wait_until(lambda: log.is_file() and "fault: hanging on job" in log.read_text("utf-8", "replace"), 60,
                   what="the worker to hang")
        (pid,) = [w["pid"] for w in httpx.get(self.url + "/status", timeout=10).json()["workers"]]
        return int(pid)

    def status(self) -> dict[str, Any]:
        """GET /status."""
        body: dict[str, Any] = httpx.get(self.url + "/status", timeout=10).json()
        return body


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("agent"))
    try:
        a.wait_ready()
        yield a
    finally:
        a.stop()


def _secure(r: httpx.Response) -> None:
    assert r.headers.get("cache-control") == "no-store", (str(r.request.url), r.status_code)
    assert r.headers.get("x-content-type-options") == "nosniff", (str(r.request.url), r.status_code)


def test_native_jobs(agent: Agent) -> None:
    with httpx.Client(base_url=agent.url, timeout=20) as c:
        r = c.post("/v1/jobs", json={"prompt": "a fox", "seed": 11, "n": 2, "width": 96, "height": 64},
                   headers={"X-Request-ID": "it-native-42"})
        assert r.status_code == 202, r.text
        assert r.headers["x-request-id"] == "it-native-42"
        job = r.json()["id"]
        assert r.headers["location"] == f"/v1/jobs/{job}"
        deadline = time.monotonic() + 30
        while (body := c.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        assert body["status"] == "succeeded", body
        assert body["params"]["seeds"] == [11, 12]
        img = c.get(body["images"][1])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        png = Image.open(io.BytesIO(img.content))
        assert png.size == (96, 64)
        # The real pipeline drew it: the fault engine's images say "synthetic (fault engine)".
        text = png_text(png)
        assert text["model"] == "tiny (random weights)" and "zitops_notice" in text
        assert c.get("/status").json()["engine"] == "diffusers"
        # The agent encoded one throwaway image per format at start, so no request paid the first call.
        warm = wait_until(lambda: c.get("/status").json()["encoder_warm_ms"], 30.0, what="the encoder's warm-up")
        assert set(warm) == {"png", "jpeg", "webp"}, warm
        _secure(img)
        assert c.get(f"/v1/jobs/{job}/images/5").status_code == 404
        assert c.delete(f"/v1/jobs/{job}").status_code == 409
        assert c.get("/v1/jobs/doesnotexist").status_code == 404
    # The request id is bound into the agent's log lines for that request.
    lines = [json.loads(line) for line in (agent.tmp / "log_dir" / "zitops.log").read_text().splitlines()
             if "it-native-42" in line]
    assert any(rec.get("job_id") == job and rec.get("request_id") == "it-native-42" for rec in lines), lines


def test_openai_client(agent: Agent) -> None:
    oa = openai.OpenAI(base_url=agent.url + "/v1", api_key="sk-placeholder", max_retries=0, timeout=60)
    res = oa.images.generate(prompt="a lighthouse", n=2, size="128x64", extra_body={"seed": 3})
    assert res.data is not None
    sizes = [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))).size for d in res.data]
    assert sizes == [(128, 64), (128, 64)]
    res = oa.images.generate(prompt="a lighthouse", size="64x64", response_format="url")
    assert res.data is not None and httpx.get(res.data[0].url or "", timeout=10).status_code == 200
    with pytest.raises(openai.UnprocessableEntityError):
        oa.images.generate(prompt="x", size="100x100")


@pytest.mark.parametrize("body", [SEED_CURL_BODY, BRIEF_CURL_BODY])
def test_the_seeds_curl(agent: Agent, body: str) -> None:
    # The exact bytes curl sends with -d and the Content-Type header.
    r = httpx.post(agent.url + "/sdapi/v1/txt2img", content=body,
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["images"][0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads(r.json()["info"])
    assert info["steps"] == 8 and info["cfg_scale"] == 0.0


def test_webuiapi_client(agent: Agent) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=agent.port, sampler="Euler a", steps=4)
    result = api.txt2img(prompt="a teapot", seed=9, width=64, height=64, batch_size=2, n_iter=2)
    assert len(result.images) == 4 and result.images[0].size == (64, 64)
    assert result.info["all_seeds"] == [9, 10, 11, 12]
    assert "DPM++ 2M SDE" in [s["name"] for s in api.get_samplers()]
    with pytest.raises(RuntimeError, match="enable_hr"):
        api.txt2img(prompt="x", enable_hr=True, width=64, height=64)


def test_ops_endpoints_and_headers(agent: Agent) -> None:
    with httpx.Client(base_url=agent.url, timeout=20) as c:
        rs = [c.get(p) for p in ("/livez", "/readyz", "/healthz", "/status", "/metrics", "/openapi.json", "/nope")]
        rs.append(c.post("/v1/images/generations", content=b"x" * 100_000))
        rs.append(c.post("/v1/jobs", json={"prompt": "x", "bogus": 1}))
        for r in rs:
            _secure(r)
        assert [r.status_code for r in rs] == [200, 200, 200, 200, 200, 200, 404, 413, 422]
        status = rs[3].json()
        assert status["workers"] and {"pid", "state", "jobs_done", "vram"} <= set(status["workers"][0])
        metrics = rs[4].text
        for name in ("zitops_http_requests_total", "zitops_http_request_duration_seconds_bucket",
                     "zitops_queue_depth", "zitops_worker_restarts"):
            assert name in metrics, name


def test_bad_bodies_never_5xx(agent: Agent) -> None:
    bodies = [b"", b"{", b"[]", b"null", b'{"prompt": NaN}', b'{"prompt": "x", "width": 1e400}',
              b'{"prompt": "x", "seed": 99999999999999999999999}', b'{"prompt": "\\u0000"}',
              b'{"prompt": "x", "n": -1}', b'{"prompt": "x", "size": "0x0"}', b"[" * 2000 + b"]" * 2000,
              json.dumps({"prompt": "x", "batch_size": 10**9, "n_iter": 10**9}).encode(),
              json.dumps({"prompt": ["x"], "override_settings": {"a": {"b": [1, {"c": None}]}}}).encode()]
    with httpx.Client(base_url=agent.url, timeout=20) as c:
        for route in ("/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img"):
            for body in bodies:
                r = c.post(route, content=body, headers={"content-type": "application/json"})
                assert 400 <= r.status_code < 500, (route, body[:80], r.status_code, r.text[:200])
                _secure(r)


@pytest.fixture
def hung_agent(tmp_path: Path) -> Iterator[Agent]:
    """An agent whose only worker hangs in its first job (the fault engine), until the test kills it."""
    a = Agent(tmp_path, faults={"hang_on_job": 1})
    try:
        a.wait_ready()
        yield a
    finally:
        a.stop()


def _hold_the_worker(agent: Agent) -> int:
    """Submit the job the worker hangs in; the worker's pid once it hangs."""
    r = httpx.post(agent.url + "/v1/jobs", json={"prompt": "the hung one"}, timeout=10)
    assert r.status_code == 202, r.text
    return agent.hung_worker()


def test_queue_limit_60_concurrent_at_depth_20(hung_agent: Agent) -> None:
    pid = _hold_the_worker(hung_agent)  # nothing leaves the queue: exactly 20 of 60 fit

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        if i % 2:
            return await client.post("/v1/images/generations", json={"prompt": f"p{i}", "size": "64x64"})
        return await client.post("/v1/jobs", json={"prompt": f"p{i}"})

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=hung_agent.url, timeout=120, limits=limits) as client:
            tasks = [asyncio.ensure_future(one(client, i)) for i in range(60)]
            # The refusals come back at once; the synchronous requests that got in wait for their
            # jobs, which run only once the hung worker is gone.
            while sum(t.done() and t.result().status_code in (429, 503) for t in tasks) < 40:
                await asyncio.wait([t for t in tasks if not t.done()], timeout=0.5,
                                   return_when=asyncio.FIRST_COMPLETED)
            assert hung_agent.status()["queue"]["depth"] == 20
            os.kill(pid, signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*tasks), 150)

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert all(c in (200, 202, 429, 503) for c in codes), codes
    refused = [r for r in responses if r.status_code in (429, 503)]
    assert len(refused) == 40, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert sum(c in (200, 202) for c in codes) == 20
    # The agent is healthy again and drains its queue.
    wait_until(lambda: httpx.get(hung_agent.url + "/readyz", timeout=5).status_code == 200, 60,
               what="readiness after the queue drained")


def test_livez_answers_while_the_queue_is_full_and_the_worker_hangs(hung_agent: Agent) -> None:
    pid = _hold_the_worker(hung_agent)

    async def fill() -> list[int]:
        async with httpx.AsyncClient(base_url=hung_agent.url, timeout=20) as client:
            rs = await asyncio.gather(*(client.post("/v1/jobs", json={"prompt": f"fill {i}"}) for i in range(25)))
            return [r.status_code for r in rs]

    codes = asyncio.run(fill())
    assert codes.count(202) == 20 and codes.count(429) + codes.count(503) == 5, codes
    # livez answers on a fresh connection while nothing can leave the queue: it waits on no job.
    for _ in range(11):
        assert _livez(hung_agent.port).startswith(b"HTTP/1.1 200 ")
    st = hung_agent.status()
    assert st["queue"]["depth"] == 20 and st["queue"]["running"] == 1
    assert httpx.get(hung_agent.url + "/readyz", timeout=10).status_code == 503
    os.kill(pid, signal.SIGKILL)  # so the agent's drain at teardown waits on no hang


def _livez(port: int) -> bytes:
    """The raw answer to ``GET /livez`` on a new connection (a generous socket timeout bounds it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while not data.endswith(b"}"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        return data


@pytest.fixture(scope="module")
def authed_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("authed"), tokens=True)
    try:
        a.wait_ready()
        yield a
    finally:
        a.stop()


def test_auth_end_to_end(authed_agent: Agent) -> None:
    url = authed_agent.url
    assert httpx.get(url + "/livez", timeout=10).status_code == 200
    # The probes are open (kubelets send no token) and say only ready or not, with reason codes.
    ready = httpx.get(url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}, ready.text
    for path in ("/status", "/metrics", "/openapi.json", "/sdapi/v1/samplers"):
        r = httpx.get(url + path, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
    oa = openai.OpenAI(base_url=url + "/v1", api_key="sk-placeholder", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        oa.images.generate(prompt="x")
    oa = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0, timeout=60)
    data = oa.images.generate(prompt="x").data
    assert data is not None and data[0].b64_json
    status = httpx.get(url + "/status", headers=authed_agent.headers, timeout=10)
    assert status.status_code == 200 and TOKEN not in status.text
    logs = "".join(p.read_text(errors="replace") for p in (authed_agent.tmp / "log_dir").glob("*.log"))
    logs += (authed_agent.tmp / "agent.out").read_text(errors="replace")
    assert TOKEN not in logs


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(("argv", "outputs"), [
    (["bash", str(EXAMPLES / "client_native.sh")], ["native-0.png", "native-1.png"]),
    ([sys.executable, str(EXAMPLES / "client_openai.py")], ["openai-0.png", "openai-1.png"]),
    ([sys.executable, str(EXAMPLES / "client_a1111.py"), "127.0.0.1"], ["a1111-0.png", "a1111-1.png"]),
])
def test_examples_run_against_the_agent(agent: Agent, tmp_path: Path, argv: list[str], outputs: list[str]) -> None:
    # client_a1111.py takes HOST PORT, the others a base URL.
    args = argv + ([str(agent.port)] if "client_a1111" in " ".join(argv) else [agent.url])
    env = {**os.environ, "ZITOPS_URL": agent.url}
    env.pop("ZITOPS_TOKEN", None)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in outputs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_status_and_health_commands(agent: Agent, authed_agent: Agent) -> None:
    cli = [sys.executable, "-c", "from zitops.cli import main; main()"]
    env = {k: v for k, v in os.environ.items() if k != "ZITOPS_TOKEN"}
    done = subprocess.run(cli + ["status", "--url", agent.url], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "WORKER" in done.stdout and "profile   designer" in done.stdout
    done = subprocess.run(cli + ["health", "--url", agent.url], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ready"
    # health reads the open /readyz; status needs a token and says how to give one.
    done = subprocess.run(cli + ["health", "--url", authed_agent.url], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ready", done.stderr
    done = subprocess.run(cli + ["status", "--url", authed_agent.url], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "ZITOPS_TOKEN" in done.stderr
    done = subprocess.run(cli + ["health", "--url", authed_agent.url], capture_output=True, text=True, timeout=60,
                          env={**env, "ZITOPS_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr


def test_agent_refuses_an_open_bind_without_tokens(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "profile": load_profile("designer", SETS).model_dump(mode="json"), "host": "0.0.0.0", "port": free_port(),
        "paths": {k: str(tmp_path / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": "faulty"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config_from_mapping(data))))
    done = subprocess.run([sys.executable, "-c", "from zitops.cli import main; main()", "agent", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "not a loopback address" in done.stderr and "auth.behind_proxy" in done.stderr
    assert "Traceback" not in done.stderr
