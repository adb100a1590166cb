"""A history of a fleet under faults, in the spirit of Jepsen: a seeded schedule, a record, and the checks.

:class:`HistoryRun` drives real agents (tests/fleet_support.py), each in its
own network namespace (tests/netns_support.py) and bound to its veth address,
on one real PostgreSQL that listens on every pair. Clients in the root
namespace submit jobs to random agents, poll them and read their images;
meanwhile a seeded schedule of faults hits the fleet: kill -9 of an agent
(restarted under the same id), ``pg_terminate_backend`` of every connection,
kill -9 of PostgreSQL (restarted on the same data directory and port), and
a DROP partition of one agent from everything. Every client call is recorded
(:class:`Call`), and so is every store row the recorder sees (a snapshot of
the jobs table every 0.25 s while the store answers).

:func:`check` then judges the history:

- every job that got a 202 reached exactly one terminal state (the store's
  final row is terminal, and no snapshot or client ever saw it leave a
  terminal state or change between two);
- every succeeded job's image is the one its final attempt produced: the
  agents draw different synthetic pixels (``looks``), so the stored pixels
  must be those of the seed drawn by the agent that the row names;
- no job started more often than ``max_attempts`` (the agents' ``job
  started`` log records, and the row's ``attempts``);
- no client read an image that later changed (every read's digest equals
  the stored image's at the end).

The seed is printed with every failure; the same seed gives the same schedule.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import random
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.fleet_support import FleetAgent
from tests.netns_support import NetNs
from tests.pg_support import PgCluster, PgDatabase
from zitops.engine.faulty import synthetic_image

FAULTS = ("kill_agent", "terminate_backends", "restart_store", "partition")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
LOOKS = ("blobs", "noise", "blobs")
"""The pixels each agent draws: a's and b's images differ byte for byte for one seed (c draws a's)."""


@dataclass
class Call:
    """One client call: when, to which agent, what, and what came back (status 0: no answer)."""

    t: float
    agent: str
    op: str
    job: str | None
    status: int
    detail: str = ""
    seed: int | None = None


@dataclass
class Fault:
    """One fault of the schedule: when (s after the start), what, and on which agent."""

    at_s: float
    kind: str
    agent: int


@dataclass
class Summary:
    """What a run did and what the checks found."""

    seed: int
    jobs_submitted: int
    accepted: int
    refused: int
    faults: dict[str, int]
    succeeded: int
    failed: int
    lost: int
    duplicated: int
    rerun: int
    reads: int
    restarts: int
    attempts: dict[int, int]
    failures: list[str]
    violations: list[str] = field(default_factory=list)


def schedule(seed: int, jobs: int, faults: int, span_s: float, agents: int = 3,
             kinds: tuple[str, ...] = FAULTS) -> list[Fault]:
    """``faults`` faults spread over ``span_s``, each kind at least once when there are enough; by seed."""
    rng = random.Random(seed)
    picked = [kinds[i % len(kinds)] for i in range(faults)]
    rng.shuffle(picked)
    slots = sorted(rng.uniform(0.1, 0.8) * span_s for _ in picked)
    del jobs
    return [Fault(round(at, 2), kind, rng.randrange(agents)) for at, kind in zip(slots, picked, strict=True)]


def expected_pixels(seed: int, prompt: str, look: str, size: int) -> bytes:
    """The raw RGB bytes the fault engine draws for ``seed`` and ``prompt`` with ``look``."""
    return synthetic_image(seed ^ zlib.crc32(prompt.encode()), size, size, look).tobytes()  # type: ignore[no-any-return]


def pixels_of(png: bytes) -> bytes:
    """The raw RGB bytes of an encoded image."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").tobytes()  # type: ignore[no-any-return]


class HistoryRun:
    """Three agents in namespaces on one PostgreSQL, a client load, a fault schedule and the record."""

    def __init__(self, tmp: Path, *, seed: int, jobs: int, faults: int, lease_s: float = 4.0,
                 job_seconds: float = 0.3, submit_every_s: float = 0.1, max_attempts: int = 2) -> None:
        self.tmp, self.seed, self.jobs, self.lease_s = tmp, seed, jobs, lease_s
        self.job_seconds, self.submit_every_s, self.max_attempts = job_seconds, submit_every_s, max_attempts
        self.rng = random.Random(seed)
        self.span_s = jobs * submit_every_s
        self.plan = schedule(seed, jobs, faults, self.span_s)
        self.calls: list[Call] = []
        self.snapshots: dict[str, list[tuple[str, int, str | None]]] = defaultdict(list)
        self.prompts: dict[str, tuple[int, str]] = {}
        self.faults_done: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._killed: set[int] = set()
        self.restarts = 0
        self.start = time.monotonic()
        self.nets: list[NetNs] = []
        self.agents: list[FleetAgent] = []
        self.cluster: PgCluster | None = None
        self.db: PgDatabase | None = None

    # --- setup ----------------------------------------------------------------------

    def up(self) -> None:
        """Namespaces, PostgreSQL on every pair (commits durable, so a kill -9 keeps every 202), three agents."""
        self.nets = [NetNs().create() for _ in LOOKS]
        self.cluster = PgCluster(listen=tuple(n.host_ip for n in self.nets), hba=tuple(str(n.subnet) for n in self.nets),
                                 conf=("synchronous_commit = on",))
        self.db = self.cluster.create_db()
        for i, (ns, look) in enumerate(zip(self.nets, LOOKS, strict=True)):
            in_ns = PgDatabase(self.cluster.url(self.db.name, host=ns.host_ip), self.db.password_file, self.db.name)
            self.agents.append(FleetAgent(self.tmp / "abc"[i], in_ns, job_seconds=self.job_seconds,
                                          lease_s=self.lease_s, prefix=tuple(ns.argv()), host=ns.ns_ip, tokens=True,
                                          faults={"pixels": look}))
        for agent in self.agents:
            agent.wait_ready()

    def down(self) -> None:
        """Agents, cluster and namespaces gone, whatever happened."""
        self._stop.set()
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.stop()
        if self.cluster is not None:
            self.cluster.remove()
        for ns in self.nets:
            ns.remove()

    # --- the record ---------------------------------------------------------------------

    def _call(self, i: int, op: str, method: str, path: str, job: str | None = None, **kw: Any) -> httpx.Response | None:
        agent = self.agents[i]
        try:
            r = httpx.request(method, agent.url + path, headers=agent.headers, timeout=3.0, **kw)
        except httpx.HTTPError:
            with self._lock:
                self.calls.append(Call(time.monotonic() - self.start, "abc"[i], op, job, 0))
            return None
        detail = ""
        if op == "get" and r.status_code == 200:
            detail = str(r.json()["status"])
        elif op == "image" and r.status_code == 200:
            detail = hashlib.sha256(r.content).hexdigest()
        elif op == "submit" and r.status_code == 202:
            job = str(r.json()["id"])
        elif r.status_code != 200:
            detail = r.text[:200]
        with self._lock:
            self.calls.append(Call(time.monotonic() - self.start, "abc"[i], op, job, r.status_code, detail,
                                   kw.get("json", {}).get("seed")))
        return r

    def _submitter(self) -> None:
        rng = random.Random(self.seed + 1)
        # Several clients: a call into a partition (3 s to time out) does not hold back the next submits.
        with concurrent.futures.ThreadPoolExecutor(4) as clients:
            for n in range(self.jobs):
                if self._stop.wait(max(0.0, self.start + n * self.submit_every_s - time.monotonic())):
                    return
                clients.submit(self._submit, rng.randrange(len(self.agents)), rng.randrange(1 << 30),
                               f"history {n}")

    def _submit(self, agent: int, seed: int, prompt: str) -> None:
        r = self._call(agent, "submit", "POST", "/v1/jobs", json={"prompt": prompt, "seed": seed})
        if r is not None and r.status_code == 202:
            with self._lock:
                self.prompts[str(r.json()["id"])] = (seed, prompt)

    def _reader(self) -> None:
        rng = random.Random(self.seed + 2)
        while not self._stop.wait(0.05):
            with self._lock:
                ids = list(self.prompts)
            if not ids:
                continue
            job = rng.choice(ids)
            i = rng.randrange(len(self.agents))
            r = self._call(i, "get", "GET", f"/v1/jobs/{job}", job)
            if r is not None and r.status_code == 200 and r.json()["status"] == "succeeded":
                self._call(i, "image", "GET", f"/v1/jobs/{job}/images/0", job)

    def _recorder(self) -> None:
        assert self.db is not None
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        while not self._stop.wait(0.25):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.db.url, password=self.db.password_file.read_text().strip(),
                                           autocommit=True, connect_timeout=2)
                rows = conn.execute("SELECT id, status, attempts, image_attempt FROM zitops.jobs").fetchall()
            except psycopg.Error:
                conn = None
                continue
            for job, status, attempts, image_attempt in rows:
                seen = self.snapshots[job]
                now = (status, attempts, None if image_attempt is None else str(image_attempt))
                if not seen or seen[-1] != now:
                    seen.append(now)
        if conn is not None:
            conn.close()

    # --- the faults -------------------------------------------------------------------

    def _fault(self, fault: Fault) -> None:
        assert self.cluster is not None and self.db is not None
        agent, ns = self.agents[fault.agent], self.nets[fault.agent]
        if fault.kind == "kill_agent":
            with self._lock:
                self._killed.add(fault.agent)
                agent.kill9()
            time.sleep(self.rng.uniform(0.5, self.lease_s))  # down for a while: its leases may expire
            with self._lock:
                agent.restart()
                self._killed.discard(fault.agent)
        elif fault.kind == "terminate_backends":
            self.cluster.terminate(self.db.name)
        elif fault.kind == "restart_store":
            self.cluster.kill9()
            time.sleep(self.rng.uniform(0.2, 2.0))
            self.cluster.start()
        elif fault.kind == "partition":
            ns.cut("DROP")
            time.sleep(self.rng.uniform(1.0, self.lease_s * 2))  # past the lease sometimes: b reaps a's jobs
            ns.heal()
        self.faults_done[fault.kind] += 1

    def _supervisor(self) -> None:
        """systemd's Restart=always: an agent that exited (it cannot start while the store is down) starts again."""
        while not self._stop.wait(0.5):
            with self._lock:
                for i, agent in enumerate(self.agents):
                    if i not in self._killed and agent.proc.poll() is not None:
                        agent.restart()
                        self.restarts += 1

    def _faulter(self) -> None:
        for fault in self.plan:
            if self._stop.wait(max(0.0, self.start + fault.at_s - time.monotonic())):
                return
            self._fault(fault)

    # --- the run ------------------------------------------------------------------------

    def run(self, settle_s: float = 180.0) -> Summary:
        """Load and faults, then wait until every accepted job is final (bounded), then check."""
        self.start = time.monotonic()
        threads = [threading.Thread(target=t, daemon=True) for t in (self._submitter, self._reader, self._faulter,
                                                                       self._recorder, self._supervisor)]
        for t in threads:
            t.start()
        threads[0].join(self.span_s + 120)
        threads[2].join(self.span_s + 120)
        for agent in self.agents:  # every agent back: the lease reaper and the restarts have run
            poll_ready(agent)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline and not self._all_final():
            time.sleep(0.5)
        time.sleep(0.5)  # one more recorder round after the last change
        self._stop.set()
        for t in threads:
            t.join(30)
        return self.judge()

    def _rows(self) -> dict[str, dict[str, Any]]:
        assert self.db is not None
        with psycopg.connect(self.db.url, password=self.db.password_file.read_text().strip(), autocommit=True,
                             row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute("SELECT id, status, attempts, agent_id, image_attempt, error FROM zitops.jobs").fetchall()
            images = conn.execute("SELECT i.job_id, i.data FROM zitops.job_images i JOIN zitops.jobs j "
                                  "ON j.id = i.job_id AND i.attempt = j.image_attempt WHERE i.idx = 0").fetchall()
        out = {str(r["id"]): dict(r) for r in rows}
        for img in images:
            out[str(img["job_id"])]["png"] = bytes(img["data"])
        return out

    def _all_final(self) -> bool:
        try:
            rows = self._rows()
        except psycopg.Error:
            return False
        with self._lock:
            ids = list(self.prompts)
        return all(rows.get(j, {}).get("status") in TERMINAL for j in ids)

    def starts(self) -> Counter[str]:
        """How often each job was started, from every agent's log (a killed agent's file stays)."""
        n: Counter[str] = Counter()
        for agent in self.agents:
            for rec in agent.log_lines("job started"):
                n[str(rec["job_id"])] += 1
        return n

    def judge(self) -> Summary:
        """The checks of the module docstring over the record; the numbers of the run."""
        rows = self._rows()
        looks = {agent.agent_id: look for agent, look in zip(self.agents, LOOKS, strict=True)}
        violations = check(self.calls, self.snapshots, rows, self.prompts, self.starts(), looks,
                           self.max_attempts, size=64)
        accepted = set(self.prompts)
        final = [rows[j]["status"] for j in accepted if j in rows]
        starts = self.starts()
        return Summary(
            seed=self.seed, jobs_submitted=self.jobs, accepted=len(accepted),
            refused=sum(1 for c in self.calls if c.op == "submit" and c.status != 202),
            faults=dict(self.faults_done), succeeded=final.count("succeeded"), failed=final.count("failed"),
            lost=sum(1 for j in accepted if rows.get(j, {}).get("status") not in TERMINAL),
            duplicated=sum(1 for v in violations if v.startswith(("ran ", "left a terminal"))),
            rerun=sum(1 for j in accepted if starts[j] > 1),
            reads=sum(1 for c in self.calls if c.op == "image" and c.status == 200), restarts=self.restarts,
            failures=[str(rows[j]["error"]) for j in accepted if rows.get(j, {}).get("status") == "failed"],
            attempts=dict(sorted(Counter(int(rows[j]["attempts"]) for j in accepted if j in rows).items())),
            violations=violations,
        )

    def dump(self, path: Path) -> None:
        """The record (calls, snapshots, the plan) as JSON, for a failure's post-mortem."""
        path.write_text(json.dumps({"seed": self.seed, "plan": [asdict(f) for f in self.plan],
                                    "calls": [asdict(c) for c in self.calls], "snapshots": self.snapshots},
                                   indent=1))


def poll_ready(agent: FleetAgent, timeout_s: float = 120) -> None:
    """Wait until ``agent`` answers /readyz 200 (the supervisor restarts it meanwhile if it exits)."""
    deadline = time.monotonic() + timeout_s
    while not agent.ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"agent {agent.agent_id} not ready within {timeout_s} s:\n{agent.output()}")
        time.sleep(0.2)


def check(calls: list[Call], snapshots: dict[str, list[tuple[str, int, str | None]]],
          rows: dict[str, dict[str, Any]], accepted: dict[str, tuple[int, str]], starts: Counter[str],
          looks: dict[str, str], max_attempts: int, size: int) -> list[str]:
    """Every violation of the history's rules (see the module docstring); empty when it holds."""
    bad: list[str] = []
    for job, (seed, prompt) in accepted.items():
        row = rows.get(job)
        if row is None or row["status"] not in TERMINAL:
            bad.append(f"lost: job {job} got a 202 and is {row and row['status']} at the end")
            continue
        terminal = [s for s in snapshots.get(job, []) if s[0] in TERMINAL]
        if terminal and any(s != terminal[0] for s in terminal):
            bad.append(f"left a terminal state: job {job} went {terminal}")
        seen = [c.detail for c in calls if c.op == "get" and c.job == job and c.detail in TERMINAL]
        if any(s != row["status"] for s in seen):
            bad.append(f"left a terminal state: clients saw job {job} as {sorted(set(seen))}, "
                       f"it ended {row['status']}")
        if row["attempts"] > max_attempts or starts[job] > max_attempts:
            bad.append(f"ran {starts[job]} times (row attempts {row['attempts']}): job {job} over "
                       f"max_attempts {max_attempts}")
        if row["status"] == "succeeded":
            png = row.get("png")
            if png is None or row["image_attempt"] != row["attempts"]:
                bad.append(f"succeeded without its final attempt's image: job {job} (attempts {row['attempts']}, "
                           f"image_attempt {row['image_attempt']})")
            elif pixels_of(png) != expected_pixels(seed, prompt, looks[row["agent_id"]], size):
                bad.append(f"wrong image: job {job}'s stored pixels are not what agent {row['agent_id']} "
                           f"(its final attempt) draws for seed {seed}")
            else:
                final = hashlib.sha256(png).hexdigest()
                changed = {c.detail for c in calls if c.op == "image" and c.job == job and c.status == 200} - {final}
                if changed:
                    bad.append(f"a client read an image that later changed: job {job}")
    return bad


@contextlib.contextmanager
def history_run(tmp: Path, **kw: Any) -> Iterator[HistoryRun]:
    """A started :class:`HistoryRun`, taken down afterwards."""
    run = HistoryRun(tmp, **kw)
    try:
        run.up()
        yield run
    finally:
        run.down()
