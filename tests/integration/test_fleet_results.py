"""A fleet's results where operators want them: two real agents on one real PostgreSQL (tests/pg_support.py).

The agents keep images in a real SeaweedFS (tests/s3_support.py), send
webhooks to a real receiver on 127.0.0.1 that fails each first delivery
(signatures checked with PyPI's ``standardwebhooks``), and fail queued jobs
past their ``max_queue_s`` in SQL, on the database's clock, once for the
fleet. The fault engine makes jobs of a known length. One database, one
SeaweedFS, one receiver and the two agents serve the whole module; the
console's test drives Debian's Chromium through playwright.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
import standardwebhooks

from tests.console_support import Outside, browser
from tests.fleet_support import FleetAgent
from tests.runtime_support import wait_until
from tests.webhook_support import SECRET, Receiver, secret_file, serve

if TYPE_CHECKING:
    from tests.pg_support import PgCluster, PgDatabase
    from tests.s3_support import Weed

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.pg_support", "tests.s3_support"]  # pg_cluster; weed (bucket zitops-images)

BUCKET, PREFIX = "zitops-images", "fleet"
JOB_S = 1.0
"""Each job's length on the fault engine: long enough to keep both agents busy behind a few blockers."""


@dataclass
class Fleet:
    """The module's servers: the agents, their database, the object store and the webhook receiver."""

    agents: list[FleetAgent]
    configs: list[dict[str, Any]]
    db: PgDatabase
    weed: Weed
    receiver: Receiver
    hook: str


@pytest.fixture(scope="module")
def fleet(pg_cluster: PgCluster, weed: Weed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet-results")
    db = pg_cluster.create_db()
    receiver = Receiver()
    server, port = serve(receiver)
    agents: list[FleetAgent] = []
    configs: list[dict[str, Any]] = []
    try:
        for name in ("a", "b"):
            (tmp / name).mkdir()
            config: dict[str, Any] = {
                "images": {"url": f"s3://{BUCKET}/{PREFIX}", "s3_endpoint": weed.endpoint, "url_ttl_s": 600,
                           "s3_credentials_file": str(weed.credentials_file(tmp / name / "s3-credentials")),
                           "check_interval_s": 0.5},
                "webhooks": {"secret_file": str(secret_file(tmp / name / "webhook.secret")),
                             "allowed_hosts": [f"http://127.0.0.1:{port}"], "backoff_s": 0.3,
                             "backoff_max_s": 2.0, "max_attempts": 4},
            }
            configs.append(config)
            agents.append(FleetAgent(tmp / name, db, job_seconds=JOB_S, config=config))
        for agent in agents:
            agent.wait_ready()
        yield Fleet(agents, configs, db, weed, receiver, f"http://127.0.0.1:{port}/hooks/zitops")
    finally:
        for agent in agents:
            agent.stop()
        server.shutdown()
        with contextlib.suppress(psycopg.OperationalError):
            pg_cluster.drop_db(db.name)


def final(agent: FleetAgent, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    job: dict[str, Any] = wait_until(lambda: (j := agent.job(job_id))["status"] in ("succeeded", "failed", "cancelled")
                                     and j, timeout_s, what=f"job {job_id} to end")
    return job


def row(db: PgDatabase, sql: str, *params: Any) -> tuple[Any, ...]:
    with db.connect() as conn:
        got = conn.execute(sql, params).fetchone()
    assert got is not None
    return tuple(got)


def test_a_job_done_on_one_agent_is_one_signed_webhook_objects_in_s3_and_served_by_the_other(fleet: Fleet) -> None:
    job_id = fleet.agents[0].submit(webhook=fleet.hook)
    job = final(fleet.agents[0], job_id)
    assert job["status"] == "succeeded", job
    (ran_on,) = row(fleet.db, "SELECT agent_id FROM zitops.jobs WHERE id = %s", job_id)
    other = next(a for a in fleet.agents if a.agent_id != ran_on)

    # The objects exist (boto3 reads them), and the store keeps their keys, not their bytes.
    s3 = fleet.weed.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{job_id}/")["Contents"]]
    assert len(keys) == 1 and keys[0].endswith(".png")
    stored = s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
    assert stored[:8] == b"\x89PNG\r\n\x1a\n"
    assert row(fleet.db, "SELECT count(*) FROM zitops.job_images WHERE job_id = %s", job_id) == (0,)
    assert row(fleet.db, "SELECT image_bytes FROM zitops.jobs WHERE id = %s", job_id) == (0,)

    # The agent that did not run the job serves its bytes and presigned links to the same object.
    served = other.client.get(f"/v1/jobs/{job_id}/images/0")
    assert served.status_code == 200 and served.content == stored
    (link,) = other.job(job_id)["images"]
    assert link.startswith(f"{fleet.weed.endpoint}/{BUCKET}/{PREFIX}/{job_id}/")
    assert httpx.get(link, timeout=10).content == stored

    # One delivery for the fleet: the first attempt answered 500, the retry 204, then nothing more.
    hooks = wait_until(lambda: [d for d in other.client.get("/status").json()["webhooks"]["recent"]
                                if d["job_id"] == job_id and d["state"] == "delivered"], 60,
                       what="the fleet's ledger to say delivered")
    assert hooks[0]["attempts"] == 2
    got = fleet.receiver.deliveries(job_id)
    assert [status for status, _, _ in got] == [500, 204]
    verifier = standardwebhooks.Webhook(SECRET)
    for _, headers, body in got:
        event = verifier.verify(body, headers)  # raises on a bad signature or a stale timestamp
        assert headers["webhook-id"] == f"msg_{job_id}"
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id
        (hooked,) = event["data"]["images"]  # a presigned URL of the object, not an agent's path
        assert hooked.startswith(f"{fleet.weed.endpoint}/{BUCKET}/{PREFIX}/{job_id}/")
        assert httpx.get(hooked, timeout=10).content == stored
    # The agent that finished the job sent the first attempt; the retry went to whichever agent claimed it.
    def by(event: str) -> list[str]:
        return [a.agent_id for a in fleet.agents for r in a.log_lines(event) if r.get("job_id") == job_id]

    assert by("webhook attempt failed; retrying") == [ran_on]
    assert len(by("webhook delivered")) == 1


def test_a_job_queued_past_its_deadline_fails_once_for_the_fleet_with_a_record(fleet: Fleet) -> None:
    a, b = fleet.agents
    # Six high-priority blockers keep both agents' workers busy for ~3 job lengths; the late job waits behind.
    blockers = [(a if i % 2 else b).submit(priority=2) for i in range(6)]
    late = a.submit(priority=0, max_queue_s=1)
    failed = final(b, late, 30)  # visible from either agent
    assert failed["status"] == "failed" and failed["started_at"] is None and failed["attempts"] == 0
    assert failed["error"].startswith("max_queue_s: still queued after ") and "past its deadline of 1 s" in \
        failed["error"]
    # Every blocker ends after the late job failed: by then each agent ran its deadline round several times.
    for job_id in blockers:
        assert final(a, job_id)["status"] == "succeeded"
    records = [r for agent in fleet.agents for r in agent.client.get("/v1/failures").json()["failures"]
               if r["job_id"] == late]
    assert len(records) == 1 and records[0]["kind"] == "deadline", records
    assert "max_queue_s" in records[0]["message"]
    logged = [r for agent in fleet.agents for r in agent.log_lines("job failed: queued past its deadline")
              if r.get("job_id") == late]
    assert len(logged) == 1


def test_the_console_shows_the_fleets_deliveries_and_the_object_stores_state(fleet: Fleet) -> None:
    """Debian's Chromium (tests/console_support.py) on the agent that did not take the job, waiting on the page."""
    job_id = fleet.agents[0].submit(webhook=fleet.hook)
    url = fleet.agents[1].url
    with browser() as context:
        page = context.new_page()
        page.set_default_timeout(60_000)
        outside = Outside(url)
        outside.attach(page)
        page.goto(url + "/")
        row = page.wait_for_selector(f'#webhook-rows tr[data-delivery="{job_id}"] td.state-delivered')
        assert row.inner_text() == "delivered"
        cells = [c.inner_text() for c in page.query_selector_all(f'#webhook-rows tr[data-delivery="{job_id}"] td')]
        assert cells[3:5] == ["2", "204"]  # attempts, the last answer
        assert "delivered" in page.inner_text("#webhook-counts")
        store = 'dd[data-field="object store"]'
        assert page.inner_text(store).startswith(f"s3://{BUCKET}/{PREFIX} · up")
        fleet.weed.stop()
        try:
            page.wait_for_function(f"() => document.querySelector('{store}').textContent.includes('down: ')")
            assert "head_bucket failed" in page.inner_text(store)
        finally:
            fleet.weed.start()
        page.wait_for_function(f"() => document.querySelector('{store}').textContent.includes(' · up')")
        assert outside.seen and not outside.left, f"requests left the agent: {outside.left}"
    for agent in fleet.agents:  # the fleet takes work again
        wait_until(agent.ready, 60, what=f"{agent.agent_id} ready again")


def test_an_agent_restarted_during_an_outage_keeps_its_held_job_and_it_runs_once(fleet: Fleet) -> None:
    job_id = fleet.agents[0].submit(prompt="held over a restart")
    wait_until(lambda: fleet.agents[0].job(job_id)["status"] == "running", 60, what="the job to start")
    (ran_on,) = row(fleet.db, "SELECT agent_id FROM zitops.jobs WHERE id = %s", job_id)
    i = next(n for n, a in enumerate(fleet.agents) if a.agent_id == ran_on)
    fleet.weed.stop()
    try:
        wait_until(lambda: any(r.get("job_id") == job_id for r in fleet.agents[i].log_lines(
            "object store down: images kept on this host until it is back")), 60, what="the images to be held")
        old = fleet.agents[i]
        old.stop()  # restarted within its lease, under the same agent id, the store still down
        fleet.agents[i] = FleetAgent(old.tmp, fleet.db, job_seconds=JOB_S, config=fleet.configs[i])
        wait_until(lambda: any(r.get("job_id") == job_id for r in fleet.agents[i].log_lines(
            "held job restored: its images wait on this host for the object store")), 120,
            what="the restarted agent to hold the job again")
        assert fleet.agents[i - 1].job(job_id)["status"] == "running"
    finally:
        fleet.weed.start()
    job = final(fleet.agents[i - 1], job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    started = [r for a in fleet.agents for r in a.log_lines("job started") if r.get("job_id") == job_id]
    assert len(started) == 1, started  # once, on the agent that was restarted
    keys = [o["Key"] for o in fleet.weed.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{job_id}/")["Contents"]]
    assert len(keys) == 1
    for agent in fleet.agents:
        wait_until(agent.ready, 60, what=f"{agent.agent_id} ready again")
