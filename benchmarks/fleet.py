"""Fleet mode, end to end through real agents: per-job overhead against SQLite, claim latency, failover.

Starts a throwaway PostgreSQL cluster (as the tests do: fsync off) and real
``zitops agent`` processes on the fault engine (synthetic pixels, 64x64 PNG),
then measures:

1. overhead: the same synchronous A1111 request on an SQLite agent and on a
   fleet agent, alternated (paired), ``--pairs`` times; median of the
   per-pair difference in ms, the median Server-Timing stages of each, and
   how many fleet jobs the other agent ran; with two fleet agents, then with
   the second stopped;
2. claim latency: on an idle fleet of two agents, a job's ``started_at``
   minus its ``created_at`` (both the server's clock), ``--jobs`` jobs one at
   a time; the same on the SQLite agent;
3. failover: agent A runs a long job with ``--lease`` s leases, B is idle;
   kill -9 of A's process group, then until B has started the job (B's
   ``started_at``, the server's clock, against the kill time on this host).

    python benchmarks/fleet.py [--pairs 40] [--jobs 30] [--lease 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fleet_support import FleetAgent  # noqa: E402
from tests.pg_support import PgCluster  # noqa: E402

BODY = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}


def q(values: list[float]) -> str:
    """Median and p95 in ms."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms (n={len(ordered)})"


def sync_seconds(agent: FleetAgent, stages: dict[str, list[float]] | None = None) -> float:
    """One synchronous A1111 request, wall seconds; its Server-Timing stages (s) appended to ``stages``."""
    t = time.perf_counter()
    r = agent.client.post("/sdapi/v1/txt2img", json=BODY)
    assert r.status_code == 200, r.text
    wall = time.perf_counter() - t
    if stages is not None:
        timing = dict(part.strip().split(";dur=") for part in r.headers["Server-Timing"].split(","))
        for name, ms in timing.items():
            stages.setdefault(name, []).append(float(ms) / 1000)
        # The queue stage is timed only by the agent that accepted the job: without
        # it, the other agent claimed and ran the job (the waiter woke on "done").
        stages.setdefault("ran elsewhere", []).append(0.0 if "queue" in timing else 1.0)
    return wall


def paired(lite: FleetAgent, fleet: FleetAgent, pairs: int, label: str) -> None:
    """SQLite against fleet requests, alternated; wall times, their paired difference, and the stages."""
    diffs, lites, pgs = [], [], []
    lite_st: dict[str, list[float]] = {}
    pg_st: dict[str, list[float]] = {}
    for _ in range(pairs):
        s, p = sync_seconds(lite, lite_st), sync_seconds(fleet, pg_st)
        lites.append(s)
        pgs.append(p)
        diffs.append(p - s)
    print(f"[{label}] sync request, SQLite agent: {q(lites)}")
    print(f"[{label}] sync request, fleet agent:  {q(pgs)}")
    print(f"[{label}] per-job overhead (fleet - SQLite, paired): {q(diffs)}")
    for name in sorted(set(lite_st) | set(pg_st)):
        if name == "ran elsewhere":
            print(f"[{label}]   jobs run by the other agent: {int(sum(pg_st.get(name, [])))} of {pairs}")
            continue
        print(f"[{label}]   {name:9} SQLite {_med(lite_st.get(name))}, fleet {_med(pg_st.get(name))}")


def _med(values: list[float] | None) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms" if values else "-"


def claim_latency(agent: FleetAgent, jobs: int) -> list[float]:
    """started_at - created_at of ``jobs`` jobs submitted one at a time to an idle agent."""
    out = []
    for i in range(jobs):
        job_id = agent.submit(seed=i)
        while (body := agent.job(job_id))["status"] != "succeeded":
            time.sleep(0.02)
        out.append(body["started_at"] - body["created_at"])
    return out


def main() -> None:
    """Run the three measurements and print them."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--lease", type=float, default=5.0)
    args = ap.parse_args()
    cluster = PgCluster()
    tmp = Path(tempfile.mkdtemp(prefix="zitops-fleet-bench-"))
    agents: list[FleetAgent] = []
    try:
        db = cluster.create_db()
        lite = FleetAgent(tmp / "sqlite", None, job_seconds=0.0)
        a = FleetAgent(tmp / "a", db, job_seconds=0.0, lease_s=args.lease)
        b = FleetAgent(tmp / "b", db, job_seconds=0.0, lease_s=args.lease)
        agents += [lite, a, b]
        for agent in agents:
            agent.wait_ready()
        for agent in (lite, a):
            sync_seconds(agent)  # warm
        paired(lite, a, args.pairs, "fleet of 2")
        print(f"claim latency, idle fleet of 2: {q(claim_latency(a, args.jobs))}")
        print(f"submit -> start, SQLite agent:  {q(claim_latency(lite, args.jobs))}")
        b.stop()  # the same fleet agent alone: no cross-agent claims or wake-ups
        paired(lite, a, args.pairs, "fleet of 1")
        for agent in (lite, a):
            agent.stop()
        agents.clear()

        db2 = cluster.create_db()
        a = FleetAgent(tmp / "fa", db2, job_seconds=60.0, lease_s=args.lease)
        agents.append(a)
        a.wait_ready()
        job_id = a.submit()
        while a.job(job_id)["status"] != "running":
            time.sleep(0.02)
        b = FleetAgent(tmp / "fb", db2, job_seconds=60.0, lease_s=args.lease)
        agents.append(b)
        b.wait_ready()
        killed = time.time()
        a.kill9()
        while (body := b.job(job_id))["attempts"] < 2:
            time.sleep(0.02)
        print(f"failover (lease {args.lease:g} s): kill -9 -> running on B after "
              f"{body['started_at'] - killed:.2f} s (target lease + 2 s = {args.lease + 2:g} s)")
    finally:
        for agent in agents:
            agent.stop()
        cluster.remove()


if __name__ == "__main__":
    main()
