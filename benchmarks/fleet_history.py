"""The fleet's history under a long seeded fault schedule: jobs, faults, lost, duplicated.

The same driver and checks as tests/adversarial/test_fleet_history.py
(tests/history_support.py), with more jobs and faults: three real agents in
network namespaces on one real PostgreSQL (durable commits), the fault
engine's synthetic pixels, and kill -9 of agents, pg_terminate_backend,
kill -9 of PostgreSQL and DROP partitions on a seeded schedule. Needs root
(namespaces, iptables) and PostgreSQL. Writes the summary as JSON.

    python benchmarks/fleet_history.py [--seed 2024] [--jobs 400] [--faults 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.history_support import history_run  # noqa: E402


def main() -> int:
    """Run the schedule, print and write the summary; exit 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--faults", type=int, default=16)
    parser.add_argument("--every", type=float, default=0.4, help="seconds between two submits")
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--job-seconds", type=float, default=1.0, help="each job's length on the fault engine")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zitops-history-") as tmp, \
            history_run(Path(tmp), seed=args.seed, jobs=args.jobs, faults=args.faults,
                        submit_every_s=args.every, lease_s=args.lease,
                        job_seconds=args.job_seconds) as run:
        summary = run.run(settle_s=300)
        plan = [dataclasses.asdict(f) for f in run.plan]
    record = {
        "benchmark": "fleet_history", "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared with other engineers' work)",
        "settings": {"seed": args.seed, "jobs": args.jobs, "faults": args.faults, "submit_every_s": args.every, "job_seconds": args.job_seconds,
                     "lease_s": args.lease, "agents": 3, "engine": "faulty (synthetic pixels, 64x64 PNG)",
                     "max_attempts": 2},
        "plan": plan, "wall_s": round(time.monotonic() - started, 1),
        "summary": dataclasses.asdict(summary),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if summary.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
