"""Cancel on disconnect: a synchronous request whose client hangs up stops its job between steps.

The real agent runs the real tiny pipeline, at a size and step count that
keep each job on its worker for seconds. The client is a plain socket: it
sends the request, waits until the agent reports the job running (an event,
not a clock), then closes the connection mid-request, as a browser tab or a
killed script does. The job must end cancelled before its last step, the
metric counts it, and the worker's next job runs. An async job is not touched.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agent_process_support import AgentProcess
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model, wait_until
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

STEPS = 50  # the profile's ceiling: seconds per job on the tiny model
SIDE = 512


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("disconnect")
    data: dict[str, Any] = {
        "profile": load_profile("designer", [f"generation.steps={STEPS}", f"generation.width={SIDE}",
                                             f"generation.height={SIDE}", *REAL_ENGINE_SETS]).model_dump(mode="json"),
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": "diffusers"},
        "log_format": "json",
    }
    link_tiny_model(tmp / "state_dir")
    proc = AgentProcess(tmp, data)
    proc.wait_ready()
    yield proc
    proc.stop()


def gone_count(agent: AgentProcess, state: str) -> float:
    text = httpx.get(agent.url + "/metrics", timeout=10).text
    line = f'zitops_client_gone_total{{state="{state}"}} '
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


def newest_job(agent: AgentProcess) -> str | None:
    """The id of the job the agent queued last (from its JSON log)."""
    log = agent.tmp / "log_dir" / "zitops.log"
    lines = log.read_text("utf-8", "replace").splitlines() if log.is_file() else []
    queued = [json.loads(line) for line in lines if '"job queued"' in line]
    return queued[-1].get("job_id") if queued else None


@pytest.mark.parametrize(("path", "body"), [
    ("/sdapi/v1/txt2img", {"prompt": "gone", "steps": STEPS}),
    ("/v1/images/generations", {"prompt": "gone", "size": f"{SIDE}x{SIDE}"}),
    ("/v1/images/generations", {"prompt": "gone", "size": f"{SIDE}x{SIDE}", "stream": True}),
])
def test_a_client_that_hangs_up_cancels_its_running_job(agent: AgentProcess, path: str, body: dict[str, Any]) -> None:
    before, last = gone_count(agent, "running"), newest_job(agent)
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{agent.port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        job_id = wait_until(lambda: (j := newest_job(agent)) != last and j, 30, what="the job's id")
        wait_until(lambda: httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "running",
                   30, what="the job to run")
    # the socket is closed here, with the job still on its worker
    job = wait_until(lambda: (j := httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json())["status"]
                     in ("cancelled", "succeeded", "failed") and j, 30, what="the abandoned job to end")
    assert job["status"] == "cancelled", job  # a running job ends cancelled only by stopping at a step
    wait_until(lambda: gone_count(agent, "running") == before + 1, 30, what="the metric")
    follow = httpx.post(agent.url + "/v1/jobs", json={"prompt": "next", "steps": 1, "width": 64, "height": 64}, timeout=10).json()["id"]
    wait_until(lambda: httpx.get(f"{agent.url}/v1/jobs/{follow}", timeout=10).json()["status"] == "succeeded",
               60, what="the worker's next job")


def test_an_async_job_is_not_cancelled_by_its_poller_going_away(agent: AgentProcess) -> None:
    job_id = httpx.post(agent.url + "/v1/jobs", json={"prompt": "async", "steps": 2, "width": 64, "height": 64}, timeout=10).json()["id"]
    with httpx.Client(timeout=10) as client:
        client.get(f"{agent.url}/v1/jobs/{job_id}")
    job = wait_until(lambda: (j := httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json())["status"]
                     in ("cancelled", "succeeded", "failed") and j, 60, what="the async job")
    assert job["status"] == "succeeded"
