"""Goodput: completed requests per second that met the latency SLO, at 1, 4, 12 and 32 concurrent clients.

A real ``zitops agent`` on loopback (the real engine: ``--model full-random``
on a GPU, ``tiny`` on a CPU; or ``--fault`` for the fault engine's synthetic
pixels, a CPU smoke of the agent alone). First the single-request latency
(the median of ``--single`` requests, one at a time); the SLO is ``--slo-x``
(2) times that. Then, for each concurrency C, C clients each send
``--per-client`` synchronous ``POST /v1/images/generations`` requests back to
back (closed loop), and it reports per level:

- ``throughput_rps``: completed (HTTP 200) requests per second of the level;
- ``goodput_rps``: completed requests whose own latency met the SLO, per second;
- ``p50_s``, ``p95_s`` and ``slo_met``: whether the level's p95 met the SLO;
- refused (429/503) and failed requests.

One worker runs one job at a time, so a closed loop of C clients sees about
C times the single latency: goodput falls off once C passes the SLO's
factor, while throughput stays flat. The numbers say where that happens.

    python benchmarks/goodput.py --fault --size 256 --per-client 2        (CPU smoke)
    python benchmarks/goodput.py --model full-random --profile designer   (GPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from zitops.bench.agent_http import free_port, percentile, running_agent, write_config
from zitops.bench.closed_loop import closed_loop, one
from zitops.profile import load_profile


def level(url: str, body: dict[str, Any], clients: int, per_client: int, slo_s: float,
          timeout_s: float) -> dict[str, Any]:
    """C closed-loop clients, ``per_client`` requests each (on average: they share one counter); the numbers."""
    results, wall = closed_loop(url, body, clients, clients * per_client, timeout_s, seed0=clients * 1000)
    done = [s for code, s in results if code == 200]
    good = [s for s in done if s <= slo_s]
    p95 = percentile(done, 0.95) if done else None
    return {"clients": clients, "requests": len(results), "completed": len(done),
            "refused": sum(1 for code, _ in results if code in (429, 503)),
            "failed": sum(1 for code, _ in results if code not in (200, 429, 503)), "wall_s": round(wall, 2),
            "throughput_rps": round(len(done) / wall, 3), "goodput_rps": round(len(good) / wall, 3),
            "p50_s": round(statistics.median(done), 3) if done else None,
            "p95_s": round(p95, 3) if p95 is not None else None,
            "slo_met": p95 is not None and p95 <= slo_s}


def main(argv: list[str] | None = None) -> int:
    """Measure the single latency, then each concurrency level; print the table, write JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (CPU) or full-random (GPU)")
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--set", action="append", default=[], help="profile override KEY=VALUE (repeatable)")
    ap.add_argument("--fault", action="store_true", help="the fault engine's synthetic pixels (an agent-only smoke)")
    ap.add_argument("--job-seconds", type=float, default=0.2, help="--fault: the engine's time per job")
    ap.add_argument("--size", type=int, default=None, help="square side; default: the profile's size")
    ap.add_argument("--clients", default="1,4,12,32")
    ap.add_argument("--per-client", type=int, default=3)
    ap.add_argument("--min-requests", type=int, default=8, help="at least this many requests per level")
    ap.add_argument("--single", type=int, default=5, help="requests for the single-request latency")
    ap.add_argument("--slo-x", type=float, default=2.0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--label", default="goodput")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    sets = [*args.set, f"queue.depth={max(levels) * 2}", "queue.job_timeout_s=600"]
    if args.size:
        sets += [f"generation.width={args.size}", f"generation.height={args.size}"]
    profile = load_profile(args.profile, sets)
    work = Path(tempfile.mkdtemp(prefix="zitops-goodput-"))
    engine = ({"kind": "faulty", "faults": {"inner": "synthetic", "pixels": "noise", "job_seconds": args.job_seconds}}
              if args.fault else None)
    port = free_port()
    config = write_config(profile, args.model, work, port, cache_dir=Path(args.cache_dir or work / "cache"),
                          state_dir=work / "state", engine=engine)
    g = profile.generation
    body = {"prompt": "goodput", "size": f"{g.width}x{g.height}", "response_format": "b64_json"}
    timeout = 600.0
    with running_agent(config, port, ready_timeout_s=args.ready_timeout) as (url, ready_s):
        with httpx.Client(timeout=timeout) as client:
            for i in range(2):  # warm-up: the first requests pay compile and the spare's start
                one(client, url, {**body, "seed": 900 + i})
            singles = [one(client, url, {**body, "seed": i}) for i in range(args.single)]
        single = statistics.median(s for code, s in singles if code == 200)
        slo = args.slo_x * single
        rows = [level(url, body, c, max(args.per_client, -(-args.min_requests // c)), slo, timeout) for c in levels]
    engine_label = f"fault engine ({args.job_seconds:g} s/job)" if args.fault else f"model {args.model}"
    print(f"goodput: {engine_label}, {g.width}x{g.height}, {g.steps} steps; single-request latency "
          f"{single:.3f} s (median of {args.single}), SLO p95 <= {slo:.3f} s ({args.slo_x:g}x)")
    print(f"{'clients':>7} {'done':>5} {'refused':>7} {'throughput/s':>12} {'goodput/s':>9} {'p50 s':>7} "
          f"{'p95 s':>7}  SLO")
    for r in rows:
        print(f"{r['clients']:>7} {r['completed']:>5} {r['refused']:>7} {r['throughput_rps']:>12} "
              f"{r['goodput_rps']:>9} {r['p50_s']!s:>7} {r['p95_s']!s:>7}  {'met' if r['slo_met'] else 'missed'}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "benchmark": "goodput", "label": args.label, "engine": engine_label, "machine": platform.node(),
            "size": f"{g.width}x{g.height}", "steps": g.steps, "ready_s": round(ready_s, 2),
            "single_s": round(single, 4), "slo_s": round(slo, 4), "slo_x": args.slo_x, "levels": rows,
            "args": {k: str(v) for k, v in vars(args).items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
