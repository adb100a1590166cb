"""Priorities and queue deadlines against the real agent (fault engine: jobs of a known length).

One worker is kept busy by a first job; jobs queued behind it at priorities
0, 1 and 2 must start highest first, FIFO within a level. A token's default
priority comes from the tokens file; only admin tokens raise it. A job
still queued past its ``max_queue_s`` fails saying why, with a failure record.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agent_process_support import AgentProcess
from tests.runtime_support import wait_until
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

ADMIN = "admin-token-0123456789abcdef"
BATCH = "batch-token-0123456789abcdef"  # default priority 0
USER = "user-token-0123456789abcdefgh"  # default priority 1


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("priorities")
    tokens = tmp / "tokens"
    tokens.write_text(f"admin:{ADMIN}\n{BATCH} priority=0\n{USER}\n")
    os.chmod(tokens, 0o600)
    data: dict[str, Any] = {
        "profile": load_profile("designer", ["queue.depth=20", "queue.per_token_share=1",
                                             "watchdog.standby_worker=false"]).model_dump(mode="json"),
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": "faulty", "faults": {"inner": "synthetic", "job_seconds": 2.5}},
        "auth": {"tokens_file": str(tokens)},
        "log_format": "json",
    }
    proc = AgentProcess(tmp, data, {"Authorization": f"Bearer {ADMIN}"})
    proc.wait_ready()
    yield proc
    proc.stop()


def post(agent: AgentProcess, token: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(agent.url + "/v1/jobs", json={"prompt": "p", **body}, timeout=30,
                      headers={"Authorization": f"Bearer {token}", **(headers or {})})


def job(agent: AgentProcess, job_id: str) -> dict[str, Any]:
    got: dict[str, Any] = httpx.get(f"{agent.url}/v1/jobs/{job_id}", headers=agent.headers, timeout=10).json()
    return got


def test_the_highest_priority_starts_first_fifo_within_a_level(agent: AgentProcess) -> None:
    blocker = post(agent, ADMIN, {}).json()["id"]
    wait_until(lambda: job(agent, blocker)["status"] == "running", 60, what="the blocker to start")
    order: list[tuple[str, str, dict[str, Any], dict[str, str] | None]] = [
        ("low-a", BATCH, {}, None), ("normal-a", USER, {}, None), ("high-a", ADMIN, {"priority": 2}, None),
        ("low-b", ADMIN, {"priority": 0}, None), ("normal-b", ADMIN, {}, None),
        ("high-b", ADMIN, {}, {"X-Zitops-Priority": "2"})]
    ids = {}
    for name, token, ask, headers in order:
        r = post(agent, token, ask, headers)
        assert r.status_code == 202, r.text
        ids[name] = r.json()["id"]
    done = wait_until(lambda: (jobs := {n: job(agent, i) for n, i in ids.items()}) and
                      all(j["status"] == "succeeded" for j in jobs.values()) and jobs, 120, what="every job to finish")
    started = sorted(ids, key=lambda n: done[n]["started_at"])
    assert started == ["high-a", "high-b", "normal-a", "normal-b", "low-a", "low-b"]


def test_only_admin_tokens_raise_a_priority(agent: AgentProcess) -> None:
    refused = post(agent, BATCH, {"priority": 1})
    assert refused.status_code == 422 and "priority" in refused.json()["error"]["message"]
    refused = post(agent, USER, {}, {"X-Zitops-Priority": "2"})
    assert refused.status_code == 422 and "admin" in refused.json()["error"]["message"]
    assert post(agent, USER, {}, {"X-Zitops-Priority": "7"}).status_code == 422
    assert post(agent, USER, {"priority": 0}).status_code == 202  # lowering is anyone's right


def test_a_job_queued_past_its_deadline_fails_with_a_reason_and_a_record(agent: AgentProcess) -> None:
    blocker = post(agent, ADMIN, {"priority": 2}).json()["id"]
    wait_until(lambda: job(agent, blocker)["status"] == "running", 60, what="the blocker to start")
    late = post(agent, USER, {"max_queue_s": 1, "priority": 0}).json()["id"]
    failed = wait_until(lambda: (j := job(agent, late))["status"] != "queued" and j, 30, what="the deadline")
    assert failed["status"] == "failed" and failed["started_at"] is None
    assert "max_queue_s" in failed["error"]
    records = httpx.get(agent.url + "/v1/failures", headers=agent.headers, timeout=10).json()["failures"]
    assert any(r["kind"] == "deadline" and r["job_id"] == late for r in records)


def test_a_reload_applies_the_tokens_files_new_default_priorities(agent: AgentProcess) -> None:
    """SIGHUP (what ``zitops reload`` sends) re-reads the priorities with the tokens: no restart needed."""
    tokens = agent.tmp / "tokens"
    pid = agent.proc.pid
    try:
        tokens.write_text(f"admin:{ADMIN}\n{BATCH} priority=2\n{USER} priority=0\n")
        agent.proc.send_signal(signal.SIGHUP)
        # BATCH may now ask for 2 (its new default): refused before the reload, accepted after it.
        wait_until(lambda: post(agent, BATCH, {"priority": 2, "max_queue_s": 1}).status_code == 202, 30,
                   what="the reloaded default to let BATCH ask for priority 2")
        lowered = post(agent, USER, {"max_queue_s": 1})
        assert lowered.status_code == 202, lowered.text
        assert job(agent, lowered.json()["id"])["params"]["extra"]["priority"] == 0
        assert post(agent, USER, {"priority": 1}).status_code == 422  # above its new default
        assert agent.proc.pid == pid and agent.proc.poll() is None  # no restart
    finally:
        tokens.write_text(f"admin:{ADMIN}\n{BATCH} priority=0\n{USER}\n")
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: post(agent, BATCH, {"priority": 1}).status_code == 422, 30,
                   what="the original priorities back")
