"""Fleet mode end to end: real agents (own port and directories each) on one real PostgreSQL.

The fault engine's synthetic pixels keep the jobs fast and their length
known; the store, the HTTP layer, the workers and the processes are the real
ones. Waits are on states (job status, readiness, log records), never clocks.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
import yaml
from click.testing import CliRunner

from tests.fleet_support import FleetAgent
from tests.store_support import poll_until
from zitops.agent.storage.pg_schema import migrations
from zitops.cli import cli
from zitops.deployment import deploy

if TYPE_CHECKING:
    from tests.pg_support import PgCluster, PgDatabase

pytest_plugins = ["tests.pg_support"]  # the pg_cluster and pg_db fixtures
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def fleet(tmp: Path, db: PgDatabase, names: str, **kw: object) -> Iterator[list[FleetAgent]]:
    """Agents started at once (each with its own directories), stopped at the end."""
    agents: list[FleetAgent] = []
    try:
        for name in names:
            agents.append(FleetAgent(tmp / name, db, **kw))  # type: ignore[arg-type]
        yield agents
    finally:
        for agent in agents:
            agent.stop()


def _if_status(resp: httpx.Response, status: int) -> httpx.Response | None:
    """``resp`` when it has ``status``, else None (for poll_until)."""
    return resp if resp.status_code == status else None


def status_of(agent: FleetAgent, job_id: str) -> str:
    """The job's status as ``agent`` reports it."""
    status: str = agent.job(job_id)["status"]
    return status


def test_any_agent_serves_any_job_and_the_k8s_probe_passes(tmp_path: Path, pg_db: PgDatabase) -> None:
    with fleet(tmp_path, pg_db, "ab", tokens=True, job_seconds=1.5) as (a, b):
        # Two agents start at once on an empty database: both migrate under the
        # advisory lock, both turn ready, and the schema was built once.
        a.wait_ready()
        b.wait_ready()
        with pg_db.connect() as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM zitops.schema_version ORDER BY 1")]
        assert versions == [mig.version for mig in migrations()], versions  # every shipped one, once

        # Accepted by A; polled, fetched and cancelled through B.
        job = a.submit(seed=5, n=2)
        poll_until(lambda: status_of(b, job) == "succeeded", 60)
        body = b.job(job)
        assert body["images"] == [f"/v1/jobs/{job}/images/0", f"/v1/jobs/{job}/images/1"]
        from_b = b.client.get(body["images"][1])
        from_a = a.client.get(body["images"][1])
        assert from_b.status_code == 200 and from_b.headers["content-type"] == "image/png"
        assert from_b.content == from_a.content and from_b.content[:8] == b"\x89PNG\r\n\x1a\n"
        with pg_db.connect() as conn:
            row = conn.execute("SELECT data FROM zitops.job_images WHERE job_id = %s AND idx = 1", (job,)).fetchone()
        assert row is not None and bytes(row[0]) == from_b.content

        # Both workers busy with 1.5 s jobs, so a third job stays queued: B cancels it.
        busy = [a.submit(), a.submit()]
        poll_until(lambda: all(status_of(b, j) == "running" for j in busy), 30)
        waiting = a.submit()
        r = b.client.delete(f"/v1/jobs/{waiting}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert status_of(a, waiting) == "cancelled"

        # A synchronous OpenAI request on B completes, whichever agent runs it.
        oa = openai.OpenAI(base_url=b.url + "/v1", api_key=b.headers["Authorization"].split()[1], max_retries=0,
                           timeout=60)
        res = oa.images.generate(prompt="a lighthouse", size="64x64")
        assert res.data
        assert base64.b64decode(res.data[0].b64_json or "")[:8] == b"\x89PNG\r\n\x1a\n"

        metrics = b.client.get("/metrics").text
        assert 'zitops_fleet_jobs{status="queued"}' in metrics and "zitops_store_up 1" in metrics
        assert "zitops_fleet_agents_ready 2" in metrics

        # The rendered readiness probe, replayed as the kubelet sends it (no token,
        # the pod IP as Host), succeeds on an agent that requires tokens.
        plan = deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path / "deploy",
                                                store="postgresql://zitops@db.example:5432/zitops",
                                                zitops_bin="/usr/bin/zitops"))
        manifest = yaml.safe_load(plan.file("k8s/deployment.yaml").content)
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["httpGet"]
        assert probe["port"] == "http" and not probe.get("httpHeaders")
        kubelet = {"Host": f"127.0.0.1:{a.port}", "User-Agent": "kube-probe/1.31", "Accept": "*/*",
                   "Connection": "close"}
        r = httpx.get(f"{a.url}{probe['path']}", headers=kubelet, timeout=10)
        assert r.status_code == 200 and r.json()["ready"] is True, r.text
        assert httpx.get(f"{a.url}/v1/jobs/{job}", headers=kubelet, timeout=10).status_code == 401


def test_kill9_of_an_agent_its_jobs_run_on_another_exactly_once(tmp_path: Path, pg_db: PgDatabase) -> None:
    with fleet(tmp_path, pg_db, "a", job_seconds=2.0, lease_s=3) as (a,):
        a.wait_ready()
        jobs = [a.submit(seed=i) for i in range(8)]
        poll_until(lambda: status_of(a, jobs[0]) == "running", 30)
        a.kill9()  # the agent and its worker, mid-job: 1 job running on A, 7 queued
        with fleet(tmp_path, pg_db, "b", job_seconds=0.05, lease_s=3) as (b,):
            b.wait_ready()
            poll_until(lambda: all(status_of(b, j) == "succeeded" for j in jobs), 60)
            succeeded = [rec["job_id"] for rec in b.log_lines("job succeeded")]
            assert sorted(succeeded) == sorted(jobs), succeeded  # each exactly once, all on B
            assert b.job(jobs[0])["attempts"] == 2  # started by A, then by B
            (reaped,) = [rec for rec in b.log_lines("job requeued") if rec.get("job_id") == jobs[0]]
            assert reaped["reaped_by"] == b.agent_id and f"lease of agent {a.agent_id} expired" in reaped["reason"]
            # The reap's failure record names the reaper as a field, and `zitops failures` shows it.
            (record,) = [r for r in b.client.get("/v1/failures").json()["failures"] if r["job_id"] == jobs[0]]
            assert (record["kind"], record["agent_id"]) == ("agent", b.agent_id), record
            shown = CliRunner().invoke(cli, ["failures", "--url", b.url])
            assert shown.exit_code == 0 and "AGENT_ID" in shown.output, shown.output
            (row,) = [line for line in shown.output.splitlines() if "AgentLost" in line]
            assert b.agent_id in row, shown.output
    assert not a.log_lines("job succeeded")


def test_postgresql_restarted_mid_run_nothing_lost(tmp_path: Path, pg_cluster: PgCluster,
                                                   pg_db: PgDatabase) -> None:
    with fleet(tmp_path, pg_db, "ab", job_seconds=1.0) as (a, b):
        a.wait_ready()
        b.wait_ready()
        jobs = [a.submit(seed=i) for i in range(3)] + [b.submit(seed=10 + i) for i in range(3)]
        with ThreadPoolExecutor(1) as pool:  # a synchronous request, queued behind the six
            waiting = pool.submit(httpx.post, f"{b.url}/sdapi/v1/txt2img", json={"prompt": "w"}, timeout=120)
            poll_until(lambda: sum(status_of(b, j) == "running" for j in jobs) == 2, 30)
            poll_until(lambda: len(b.log_lines("job queued")) == 4, 30)  # its three, and the waiting one
            pg_cluster.stop()
            try:
                sync = waiting.result(timeout=60)  # the waiter's next look at the store fails
            except BaseException:
                pg_cluster.start()
                raise
        message = sync.json()["error"]["message"] if sync.status_code == 503 else sync.text
        sync_job = re.search(r"poll GET /v1/jobs/(\w+) once the job store is back", message)
        assert sync.status_code == 503 and sync_job and "job store" in message, (sync.status_code, message)
        try:
            # Stops admitting, and says why; the running jobs finish meanwhile.
            r = poll_until(lambda: _if_status(a.client.post("/v1/jobs", json={"prompt": "x"}), 503), 30)
            assert "job store" in r.json()["error"]["message"], r.text
            body = poll_until(lambda: _if_status(b.client.get("/readyz"), 503), 30).json()
            assert any(reason.startswith("store unreachable: ") for reason in body["reasons"]), body
            poll_until(lambda: a.log_lines("job store down: outcome kept until it is back")
                       or b.log_lines("job store down: outcome kept until it is back"), 30)
        finally:
            pg_cluster.start()
        poll_until(lambda: a.ready() and b.ready(), 60)
        poll_until(lambda: all(status_of(a, j) == "succeeded" for j in jobs), 90)
        poll_until(lambda: status_of(a, sync_job[1]) == "succeeded", 60)  # kept, and run
        after = b.submit()
        poll_until(lambda: status_of(a, after) == "succeeded", 60)
        done = [rec["job_id"] for agent in (a, b) for rec in agent.log_lines("job succeeded")]
        assert sorted(done) == sorted([*jobs, sync_job[1], after]), done  # each once: none lost, none twice
        # And none reached a worker twice. (The table's attempts may say 2: a claim that committed
        # while its caller had given up on the store is reaped and claimed again; it never ran.)
        started = [rec["job_id"] for agent in (a, b) for rec in agent.log_lines("job started")]
        assert sorted(started) == sorted([*jobs, sync_job[1], after]), started


def test_the_keda_query_counts_the_fleets_waiting_and_running_jobs(pg_db: PgDatabase) -> None:
    from zitops.agent.storage.store_pg import PgJobStore
    from zitops.deployment.deploy_fleet import KEDA_QUERY
    from zitops.engine.request import GenerationRequest

    store = PgJobStore(pg_db.url, password_file=pg_db.password_file, agent_id="keda-test")
    try:
        request = GenerationRequest(prompt="x", seeds=(1,), width=64, height=64, steps=2)
        ids = [store.add(request).id for _ in range(5)]
        store.claim("keda-test", "w0", 2)
        store.cancel(ids[4])
        with pg_db.connect() as conn:
            assert conn.execute(KEDA_QUERY).fetchone() == (4,)  # 2 queued + 2 running, not the cancelled one
    finally:
        store.close()
