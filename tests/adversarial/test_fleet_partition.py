"""A fleet agent cut off from PostgreSQL by a real network partition stays live, says so, and comes back.

The agent runs in a network namespace of its own (tests/netns_support.py),
PostgreSQL in the root namespace listens on the root end of the veth pair,
and iptables cuts the pair both ways: DROP (packets vanish, the agent's
connections go half-open) and REJECT (reset at once). Every HTTP call is curl
inside the namespace, on 127.0.0.1, as a kubelet's probe would be. The
agent's workers are real spawned processes (the fault engine's synthetic
pixels, slow enough that a job is running when the cable is cut).

Targets (issue 31): /livez 200 within 2 s throughout; /readyz non-200 within
15 s of the cut, naming the store; submits 503 with Retry-After within 5 s;
the running job finishes into the outbox; one warning when the store is lost
and one when it is back; WATCHDOG=1 pings go on; after the heal /readyz 200
within 15 s, submits 202, the outbox drains and no accepted job is lost or
run twice.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.fleet_support import FleetAgent
from tests.netns_support import Cut, NetNs, Response, netns  # noqa: F401 - the fixture
from tests.pg_support import PgCluster, PgDatabase

pytestmark = pytest.mark.slow

T = TypeVar("T")


def within(seconds: float, check: Callable[[], T | None], what: str) -> T:
    """Poll ``check`` until it returns a value; fail naming ``what`` once ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.2)


class Pings:
    """Counts WATCHDOG=1 datagrams on a unix socket the agent's NOTIFY_SOCKET names."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"WATCHDOG=1" in data.split(b"\n"):
                self.count += 1

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def cluster(netns: NetNs) -> Iterator[PgCluster]:  # noqa: F811 - the fixture of netns_support
    """A PostgreSQL cluster that also listens on the root end of this test's veth pair."""
    pg = PgCluster(listen=(netns.host_ip,), hba=(str(netns.subnet),))
    try:
        yield pg
    finally:
        pg.remove()


class InNs:
    """A fleet agent inside ``ns`` and curl beside it."""

    def __init__(self, ns: NetNs, agent: FleetAgent) -> None:
        self.ns, self.agent = ns, agent

    def call(self, method: str, path: str, body: object = None, timeout_s: float = 2.0) -> Response:
        """curl inside the namespace to the agent on 127.0.0.1."""
        return self.ns.http(method, f"{self.agent.url}{path}", body=body, timeout_s=timeout_s)

    def status(self, job_id: str) -> str:
        """The job's status, as the agent answers (empty when it did not)."""
        r = self.call("GET", f"/v1/jobs/{job_id}", timeout_s=5)
        return str(r.json()["status"]) if r.status == 200 else ""

    def submit(self, seed: int) -> str:
        """POST /v1/jobs, expecting 202; the job id."""
        r = self.call("POST", "/v1/jobs", {"prompt": "a fox", "seed": seed}, timeout_s=10)
        assert r.status == 202, (r.status, r.body)
        return str(r.json()["id"])

    def outbox(self) -> int | None:
        """zitops_store_outbox from /metrics (None when /metrics did not answer)."""
        r = self.call("GET", "/metrics", timeout_s=5)
        for line in r.body.splitlines() if r.status == 200 else ():
            if line.startswith("zitops_store_outbox "):
                return int(float(line.split()[1]))
        return None


@pytest.mark.parametrize("mode", ["DROP", "REJECT"])
def test_partitioned_agent_stays_live_refuses_with_reason_and_returns(
        mode: Cut, tmp_path: Path, netns: NetNs, cluster: PgCluster) -> None:  # noqa: F811
    db = cluster.create_db()
    in_ns = PgDatabase(cluster.url(db.name, host=netns.host_ip), db.password_file, db.name)
    pings = Pings(tmp_path / "notify.sock")
    # A lease far longer than the partition: nothing is reaped, so a second attempt would be a bug.
    agent = FleetAgent(tmp_path / "a", in_ns, job_seconds=4.0, lease_s=300, prefix=tuple(netns.argv()),
                       env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"})
    a = InNs(netns, agent)
    try:
        within(120, lambda: a.call("GET", "/readyz").status == 200 or None, "the agent is ready")
        running = a.submit(1)
        within(30, lambda: a.status(running) == "running" or None, "the first job runs")
        queued = a.submit(2)  # waits in the store behind it (one worker)

        netns.cut(mode)
        cut_at = time.monotonic()
        # A submit is refused at once, with the reason and when to retry.
        r = a.call("POST", "/v1/jobs", {"prompt": "during"}, timeout_s=5)
        assert r.status == 503 and "retry-after" in r.headers, (r.status, r.headers, r.body)
        assert "store" in r.json()["error"]["message"], r.body
        seen = {"first submit s": r.seconds, "slowest /livez s": 0.0}
        # /livez answers within 2 s on every look, while readiness turns.
        ready = None
        while ready is None or ready.status == 200:
            live = a.call("GET", "/livez", timeout_s=2)
            seen["slowest /livez s"] = max(seen["slowest /livez s"], live.seconds)
            assert live.status == 200, f"/livez gave no 200 within 2 s ({live.seconds:.1f} s after the cut " \
                                       f"{time.monotonic() - cut_at:.1f} s)"
            ready = a.call("GET", "/readyz", timeout_s=2)
            assert ready.status != 0, "/readyz gave no answer within 2 s"
            assert time.monotonic() - cut_at < 15, f"/readyz still {ready.status} 15 s after the cut"
        seen["cut to /readyz non-200 s"] = time.monotonic() - cut_at
        reasons = ready.json().get("reasons", [])
        assert any(reason.startswith("store unreachable: ") for reason in reasons), ready.body
        r = a.call("POST", "/v1/jobs", {"prompt": "during"}, timeout_s=5)
        assert r.status == 503 and r.headers.get("retry-after", "").isdigit(), (r.status, r.headers, r.body)
        # The running job finishes into the outbox; the agent keeps pinging systemd.
        within(30, lambda: a.outbox() == 1 or None, "the running job's outcome waits in the outbox")
        pings_now = pings.count
        within(10, lambda: pings.count >= pings_now + 3 or None, "WATCHDOG=1 pings go on during the partition")
        assert a.call("GET", "/livez", timeout_s=2).status == 200
        assert len(agent.log_lines("job store lost: new jobs are refused (503); running jobs finish into "
                                   "the outbox")) == 1, agent.output()

        netns.heal()
        healed_at = time.monotonic()
        within(15, lambda: a.call("GET", "/readyz").status == 200 or None, "/readyz 200 after the heal")
        seen["heal to /readyz 200 s"] = time.monotonic() - healed_at
        print(mode, {k: round(v, 2) for k, v in seen.items()})  # shown with -s; the bounds are asserted
        after = a.submit(3)
        within(30, lambda: a.outbox() == 0 or None, "the outbox drains")
        within(60, lambda: all(a.status(j) == "succeeded" for j in (running, queued, after)) or None,
               "every accepted job succeeds")
        assert len(agent.log_lines("job store back: admitting jobs again")) == 1, agent.output()
        assert len(agent.log_lines("job store lost: new jobs are refused (503); running jobs finish into "
                                   "the outbox")) == 1, agent.output()
    finally:
        agent.stop()
        pings.close()
    with db.connect() as conn:  # every accepted job ran once: none lost, none doubled
        rows = conn.execute("SELECT id, status, attempts FROM zitops.jobs ORDER BY created_at").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(j, "succeeded", 1) for j in (running, queued, after)]
