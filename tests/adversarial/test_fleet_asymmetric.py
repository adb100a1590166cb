"""Asymmetric partitions of a two-agent fleet, with network namespaces and port-selective iptables cuts.

Agents a and b each run in a namespace of their own (tests/netns_support.py),
bound to their veth address, and share one PostgreSQL in the root namespace;
clients talk to them from the root namespace. The two agents draw different
synthetic pixels, so an image says which agent made it. Leases are 4 s.

- **a reaches the clients but not the store** (only PostgreSQL's port is cut,
  DROP: a's connections go half-open): within a bound a's ``/readyz`` is
  false naming the store and a's submits get 503 while ``/livez`` stays 200;
  b reaps a's running job after the lease and runs it; a's worker finishes
  its copy into the outbox; after the heal a's late images and succeed are
  refused by the fence (the job keeps b's result and b's pixels, on either
  agent), and a is ready and runs jobs again by itself.
- **a reaches the store but not the clients** (only a's HTTP port is cut):
  a cannot know that no client reaches it, so its own ``/readyz`` (asked
  inside its namespace, as a kubelet would) stays 200; its heartbeats go on,
  so nothing of it is reaped (its job keeps one attempt); it goes on
  claiming the fleet's jobs, and b serves their results from the store;
  after the heal clients reach a again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.fleet_support import FleetAgent, not_ok
from tests.history_support import expected_pixels, pixels_of
from tests.netns_support import NetNs
from tests.pg_support import PgCluster, PgDatabase
from tests.store_support import poll_until

pytestmark = pytest.mark.slow

LEASE_S = 4.0


@dataclass
class Pair:
    """The cluster, the database, the two namespaces and the two agents."""

    cluster: PgCluster
    db: PgDatabase
    nets: tuple[NetNs, NetNs]
    a: FleetAgent
    b: FleetAgent


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """a (slow jobs, noise pixels) and b (fast jobs, blobs), each in its namespace; all removed afterwards."""
    tmp = tmp_path_factory.mktemp("asym")
    nets = (NetNs(), NetNs())
    agents: list[FleetAgent] = []
    cluster: PgCluster | None = None
    try:
        for ns in nets:
            ns.create()
        cluster = PgCluster(listen=tuple(n.host_ip for n in nets), hba=tuple(str(n.subnet) for n in nets))
        db = cluster.create_db()
        for name, ns, seconds, look in (("a", nets[0], 6.0, "noise"), ("b", nets[1], 0.2, "blobs")):
            in_ns = PgDatabase(cluster.url(db.name, host=ns.host_ip), db.password_file, db.name)
            agents.append(FleetAgent(tmp / name, in_ns, job_seconds=seconds, lease_s=LEASE_S, tokens=True,
                                     prefix=tuple(ns.argv()), host=ns.ns_ip, faults={"pixels": look}))
        for agent in agents:
            agent.wait_ready()
        yield Pair(cluster, db, nets, agents[0], agents[1])
    finally:
        for agent in agents:
            agent.stop()
        if cluster is not None:
            cluster.remove()
        for ns in nets:
            ns.remove()


def status(agent: FleetAgent, job: str) -> dict[str, object] | None:
    """The job as ``agent`` answers it, or None when it does not (cut off)."""
    try:
        r = agent.client.get(f"/v1/jobs/{job}", timeout=3)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]


def running_on_a(pair: Pair) -> tuple[str, int]:
    """A job that a runs, and its seed. a claims the jobs it accepts first, but on a loaded host
    b's claim can win the 50 ms grace: then b runs it in 0.2 s and a gets the next one."""
    def claimed(job: str) -> tuple[str, int, str] | None:
        got = row(pair, job)
        return got if got[0] != "queued" else None

    for seed in range(11, 21):
        job = pair.a.submit(seed=seed)
        got = poll_until(lambda: claimed(job), 30, 0.05)  # noqa: B023 - called before the loop moves on
        if got[0] == "running" and got[2] == pair.a.agent_id:
            return job, seed
    raise AssertionError("b claimed ten jobs in a row that a accepted")


def row(pair: Pair, job: str) -> tuple[str, int, str]:
    """(status, attempts, agent_id) of the job's row."""
    with pair.db.connect() as conn:
        got = conn.execute("SELECT status, attempts, agent_id FROM zitops.jobs WHERE id = %s", (job,)).fetchone()
    assert got is not None
    return str(got[0]), int(got[1]), str(got[2])


def test_a_cut_from_the_store_only_is_reaped_by_b_and_its_late_result_refused(pair: Pair) -> None:
    job, seed = running_on_a(pair)
    pair.nets[0].cut_port("DROP", pair.cluster.port, server="root")
    cut_at = time.monotonic()
    # a notices within a bound, says why, refuses new jobs, and stays live for the clients it still reaches.
    ready = poll_until(lambda: not_ok(pair.a.client.get("/readyz", timeout=3), 200), 20)
    noticed_s = time.monotonic() - cut_at
    assert "store_unavailable" in ready.json()["reasons"], ready.text  # the code a non-admin probe gets
    assert pair.a.client.get("/livez", timeout=3).status_code == 200
    r = pair.a.client.post("/v1/jobs", json={"prompt": "refused"}, timeout=5)
    assert r.status_code == 503 and "store" in r.json()["error"]["message"], r.text
    # b reaps the job after a's lease and runs it; a's worker finishes its copy into the outbox.
    poll_until(lambda: row(pair, job) == ("succeeded", 2, pair.b.agent_id), 40, 0.2)
    reaped_s = time.monotonic() - cut_at
    poll_until(lambda: "zitops_store_outbox 1" in pair.a.client.get("/metrics", timeout=5).text, 30, 0.2)

    pair.nets[0].heal()
    poll_until(lambda: pair.a.ready(), 20)
    poll_until(lambda: "zitops_store_outbox 0" in pair.a.client.get("/metrics", timeout=5).text, 20, 0.2)
    poll_until(lambda: pair.a.log_lines("job succeed dropped: its lease moved on"), 10)
    assert row(pair, job) == ("succeeded", 2, pair.b.agent_id)  # the fence kept b's result
    want = expected_pixels(seed, "a fox", "blobs", 64)  # b's look, not a's noise
    for agent in (pair.a, pair.b):
        assert pixels_of(agent.client.get(f"/v1/jobs/{job}/images/0").content) == want, agent.agent_id
    # a rejoins by itself: it accepts and runs a job again.
    running_on_a(pair)
    print({"cut to /readyz false s": round(noticed_s, 1), "cut to b's result s": round(reaped_s, 1)})


def test_a_cut_from_the_clients_only_keeps_its_leases_and_its_work(pair: Pair) -> None:
    job, seed = running_on_a(pair)
    pair.nets[0].cut_port("DROP", pair.a.port, server="ns")
    with pytest.raises(httpx.HTTPError):
        pair.a.client.get("/livez", timeout=2)
    # Inside its namespace a is healthy and ready: it reaches its store, and cannot see the cut.
    assert pair.nets[0].http("GET", f"{pair.a.url}/readyz", timeout_s=3).status == 200
    # Jobs submitted to b meanwhile run on the fleet, some on a (it still claims), all served by b.
    more = [pair.b.submit(seed=30 + i) for i in range(4)]
    poll_until(lambda: all((s := status(pair.b, j)) is not None and s["status"] == "succeeded"
                           for j in [job, *more]), 60, 0.2)
    # a's heartbeats went on through the cut: its job was never reaped, one attempt, a's own pixels.
    assert row(pair, job) == ("succeeded", 1, pair.a.agent_id)
    assert pixels_of(pair.b.client.get(f"/v1/jobs/{job}/images/0").content) == \
        expected_pixels(seed, "a fox", "noise", 64)
    assert not pair.b.log_lines("job requeued"), "b reaped a job of an agent that was alive"
    pair.nets[0].heal()
    poll_until(lambda: pair.a.ready(), 20)
    assert status(pair.a, more[0]) is not None
