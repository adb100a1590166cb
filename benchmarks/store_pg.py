"""Job store throughput and per-operation latency: PostgreSQL (fleet) against SQLite (one host).

Starts a throwaway PostgreSQL cluster (initdb + pg_ctl, as the tests do),
then:

1. throughput: ``--agents`` processes, each its own PgJobStore (pool), loop
   add -> claim -> [put_images] -> succeed; prints jobs/s for the fleet;
2. latency: one thread, each operation ``--ops`` times on each store,
   median and p95 in ms.

    python benchmarks/store_pg.py [--agents 3] [--jobs 1000] [--ops 500] [--image-bytes 0]

Durability settings are the server's defaults (fsync, synchronous_commit and
full_page_writes on) unless ``--fast``; the test cluster runs with them off.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pg_support import PgCluster  # noqa: E402
from zitops.agent.contract import JobStatus  # noqa: E402
from zitops.agent.storage.jobs import JobStore  # noqa: E402
from zitops.agent.storage.store_pg import PgJobStore  # noqa: E402
from zitops.engine.request import GenerationRequest  # noqa: E402

REQUEST = GenerationRequest(prompt="a red fox in the snow", seeds=(1,), width=1024, height=1024, steps=8)


def agent(name: str, url: str, password_file: str, jobs: int, image_bytes: int, barrier: Any,
          results: Any) -> None:
    """One agent process: add, claim, succeed ``jobs`` times; report (done, start, end)."""
    store = PgJobStore(url, password_file=password_file, agent_id=name)
    blob = os.urandom(image_bytes) if image_bytes else b""
    barrier.wait(60)
    done, start = 0, time.monotonic()
    for _ in range(jobs):
        store.add(REQUEST)
        for rec in store.claim(name, "w0", 1):
            if blob:
                store.put_images(rec.id, [(f"{rec.id}-0.png", blob)])
            store.succeed(rec.id, (f"{rec.id}-0.png",), {"seconds": 0.5})
            done += 1
    # Jobs another agent added but nobody claimed yet: drain them.
    while batch := store.claim(name, "w0", 8):
        for rec in batch:
            store.succeed(rec.id, (f"{rec.id}-0.png",), {"seconds": 0.5})
            done += 1
    results.put((done, start, time.monotonic()))
    store.close()


def throughput(url: str, password_file: str, agents: int, jobs: int, image_bytes: int) -> float:
    """Jobs per second that ``agents`` processes push through add+claim+succeed."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(agents), ctx.Queue()
    procs = [ctx.Process(target=agent, args=(f"agent-{i}", url, password_file, jobs, image_bytes,
                                             barrier, results)) for i in range(agents)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    done = sum(o[0] for o in outcomes)
    seconds = max(o[2] for o in outcomes) - min(o[1] for o in outcomes)
    assert done == agents * jobs, f"{done} jobs finished, expected {agents * jobs}"
    return done / seconds


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """Median and p95 of ``fn`` in ms over ``n`` calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (n - 1))]


def latencies(store: Any, n: int) -> dict[str, tuple[float, float]]:
    """Per-operation latency of one store: add, get, start, succeed, count."""
    ids = [store.add(REQUEST).id for _ in range(n)]
    it_get, it_start, it_done = iter(ids), iter(ids), iter(ids)
    out = {
        "add": timed(lambda: store.add(REQUEST), n),
        "get": timed(lambda: store.get(next(it_get)), n),
        "start": timed(lambda: store.start(next(it_start), "w0"), n),
        "succeed": timed(lambda: store.succeed(next(it_done), ("x.png",), {"seconds": 0.5}), n),
        "count": timed(lambda: store.count(JobStatus.QUEUED), n),
    }
    if isinstance(store, PgJobStore):
        store.recover()
        out["claim"] = timed(lambda: store.claim(store.agent_id, "w0", 1), n)
        held = store.heartbeat(store.agent_id)
        for job_id in held[4:]:  # an agent holds one lease per busy worker: keep 4
            store.succeed(job_id, (), {})
        out["heartbeat"] = timed(lambda: store.heartbeat(store.agent_id), n)
        out["reap"] = timed(store.reap_expired, n)
        out["fleet_counts"] = timed(store.fleet_counts, n)
        blob, job_id = os.urandom(1_000_000), ids[0]
        out["put 1 MB"] = timed(lambda: store.put_images(job_id, [("x.png", blob)]), max(10, n // 5))
        out["get 1 MB"] = timed(lambda: store.get_image(job_id, 0), max(10, n // 5))
    return out


def main() -> None:
    """Run both measurements and print them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1000, help="jobs per agent")
    ap.add_argument("--ops", type=int, default=500, help="calls per operation for the latency table")
    ap.add_argument("--image-bytes", type=int, default=0, help="store one image of this size per job")
    ap.add_argument("--fast", action="store_true", help="keep the test cluster's fsync=off")
    args = ap.parse_args()
    cluster = PgCluster()
    try:
        if not args.fast:
            with cluster.admin() as conn:
                conn.execute("ALTER SYSTEM SET fsync = on")
                conn.execute("ALTER SYSTEM SET synchronous_commit = on")
                conn.execute("ALTER SYSTEM SET full_page_writes = on")
                conn.execute("SELECT pg_reload_conf()")
        db = cluster.create_db()
        print(f"cluster: PostgreSQL on 127.0.0.1:{cluster.port}, fsync {'off' if args.fast else 'on'}, "
              f"{os.cpu_count()} CPUs")
        PgJobStore(db.url, password_file=db.password_file).close()  # schema first, outside the timing
        rate = throughput(db.url, str(db.password_file), args.agents, args.jobs, args.image_bytes)
        print(f"throughput: {rate:.0f} jobs/s (add+claim+{'put_images+' if args.image_bytes else ''}"
              f"succeed, {args.agents} agent processes x {args.jobs} jobs)")
        lat_db = cluster.create_db()
        pg = PgJobStore(lat_db.url, password_file=lat_db.password_file, agent_id="bench")
        with tempfile.TemporaryDirectory() as tmp:
            lite = JobStore(tmp)
            rows = {"sqlite": latencies(lite, args.ops), "postgresql": latencies(pg, args.ops)}
            lite.close()
        pg.close()
        print(f"latency, ms (median / p95 over {args.ops} calls, one thread):")
        print(f"  {'op':10} {'sqlite':>16} {'postgresql':>16}")
        for op in rows["postgresql"]:
            cells = [f"{rows[s][op][0]:.3f} / {rows[s][op][1]:.3f}" if op in rows[s] else "-"
                     for s in ("sqlite", "postgresql")]
            print(f"  {op:10} {cells[0]:>16} {cells[1]:>16}")
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
