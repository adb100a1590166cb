"""Webhooks against the real agent (real tiny pipeline) and a real receiver on 127.0.0.1.

The receiver fails the first delivery of every message; signatures are
checked with PyPI's ``standardwebhooks``, not with zitops's own code. One
agent serves the module; the restart test stops it and starts another on
the same state directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks

from tests.agent_process_support import AgentProcess
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model, wait_until
from tests.webhook_support import SECRET, Receiver, secret_file, serve
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.drain_timeout_s=10"]


def agent_data(tmp: Path, port: int, **webhooks: Any) -> dict[str, Any]:
    """The agent's config: the real tiny pipeline, webhooks signed with SECRET, the receiver allowed."""
    secret = secret_file(tmp / "webhook.secret")
    link_tiny_model(tmp / "state_dir")
    return {
        "profile": load_profile("designer", SETS + REAL_ENGINE_SETS).model_dump(mode="json"),
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": "diffusers"},
        "log_format": "json",
        "webhooks": {"secret_file": str(secret), "allowed_hosts": [f"http://127.0.0.1:{port}"],
                     "backoff_s": 0.3, "backoff_max_s": 2.0, "max_attempts": 3, **webhooks},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Receiver, int]]:
    tmp = tmp_path_factory.mktemp("webhooks")
    receiver = Receiver()
    server, port = serve(receiver)
    agent = AgentProcess(tmp, agent_data(tmp, port))
    agent.wait_ready()
    try:
        yield agent, receiver, port
    finally:
        agent.stop()
        server.shutdown()


def submit(agent: AgentProcess, hook: str) -> httpx.Response:
    return httpx.post(agent.url + "/v1/jobs", json={"prompt": "a red fox", "webhook": hook}, timeout=30)


def metric(agent: AgentProcess, outcome: str) -> float:
    text = httpx.get(agent.url + "/metrics", timeout=10).text
    line = f'zitops_webhook_deliveries_total{{outcome="{outcome}"}} '
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


def test_a_host_outside_allowed_hosts_is_refused_at_submit_naming_the_setting(
        setup: tuple[AgentProcess, Receiver, int]) -> None:
    agent, _, port = setup
    for hook in ("https://example.com/hook", f"http://127.0.0.1:{port + 1}/hook", "http://localhost/x",
                 "ftp://127.0.0.1/x"):
        r = submit(agent, hook)
        assert r.status_code == 422, (hook, r.text)
        assert "webhook" in r.text
    assert "webhooks.allowed_hosts" in submit(agent, "https://example.com/hook").text


def test_the_first_delivery_fails_the_retry_arrives_signed(setup: tuple[AgentProcess, Receiver, int]) -> None:
    agent, receiver, port = setup
    before = metric(agent, "retried"), metric(agent, "delivered")
    r = submit(agent, f"http://127.0.0.1:{port}/hooks/zitops?tenant=a")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    got = wait_until(lambda: (d := receiver.deliveries(job_id)) and len(d) >= 2 and d, 120,
                     what="the retried delivery")
    assert [status for status, _, _ in got[:2]] == [500, 204]
    verifier = standardwebhooks.Webhook(SECRET)
    for _, headers, body in got[:2]:
        event = verifier.verify(body, headers)  # raises on a bad signature or a stale timestamp
        assert event["type"] == "job.succeeded" and event["data"]["status"] == "succeeded"
        assert event["data"]["images"] == [f"/v1/jobs/{job_id}/images/0"]
    assert got[0][1]["webhook-id"] == got[1][1]["webhook-id"] == f"msg_{job_id}"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(got[1][2] + b" ", got[1][1])
    wait_until(lambda: metric(agent, "delivered") == before[1] + 1, 30, what="the delivered count")
    assert metric(agent, "retried") == before[0] + 1
    hooks = httpx.get(agent.url + "/status", timeout=10).json()["webhooks"]
    assert any(d["job_id"] == job_id and d["state"] == "delivered" and d["attempts"] == 2 for d in hooks["recent"])
    assert len(receiver.deliveries(job_id)) == 2  # delivered once it was answered 2xx: no more


def test_a_delivery_that_gives_up_is_a_failure_record(setup: tuple[AgentProcess, Receiver, int]) -> None:
    agent, receiver, port = setup
    receiver.down = True
    try:
        job_id = submit(agent, f"http://127.0.0.1:{port}/down").json()["id"]
        wait_until(lambda: len(receiver.deliveries(job_id)) >= 3, 120, what="three attempts")
        records = wait_until(lambda: [f for f in httpx.get(agent.url + "/v1/failures", timeout=10).json()["failures"]
                                      if f["kind"] == "webhook" and job_id in f["message"]], 30,
                             what="the give-up's failure record")
        assert "gave up after 3 attempts" in records[0]["message"]
        assert metric(agent, "gave_up") >= 1
        assert len(receiver.deliveries(job_id)) == 3  # webhooks.max_attempts
    finally:
        receiver.down = False


def test_a_pending_delivery_survives_an_agent_restart(setup: tuple[AgentProcess, Receiver, int],
                                                      tmp_path: Path) -> None:
    agent, receiver, port = setup
    receiver.down = True
    job_id = submit(agent, f"http://127.0.0.1:{port}/restart").json()["id"]
    wait_until(lambda: len(receiver.deliveries(job_id)) >= 1, 120, what="the first attempt")
    agent.stop()  # the delivery is pending in the job store, nothing in flight
    receiver.down = False
    again = AgentProcess(agent.tmp, agent_data(agent.tmp, port, backoff_s=0.3))
    try:
        again.wait_ready()
        got = wait_until(lambda: [d for d in receiver.deliveries(job_id) if d[0] == 204], 60,
                         what="the delivery after the restart")
        event = standardwebhooks.Webhook(SECRET).verify(got[0][2], got[0][1])
        assert event["data"]["id"] == job_id
    finally:
        again.stop()
