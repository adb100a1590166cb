"""Soak the agent runtime: allocated memory must stay flat; a leaking engine must be caught.

Not part of CI. Runs a dispatcher with real spawned workers for ``--minutes``,
keeps the queue fed, and after each job records the worker's allocated MiB
(from its post-job memory report), plus the agent process's RSS and open fds.
Prints a JSON summary. Examples::

    python benchmarks/soak_runtime.py --minutes 10                  # leak-free: flat
    python benchmarks/soak_runtime.py --minutes 2 --leak-mib 64     # negative control: recycled
    python benchmarks/soak_runtime.py --engine diffusers --minutes 10   # the tiny real pipeline
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from zitops.agent.contract import JobStatus
from zitops.agent.dispatcher import Dispatcher
from zitops.config import config_from_mapping
from zitops.engine.request import GenerationRequest
from zitops.profile import load_profile


def _config(root: Path, engine: str, leak_mib: float) -> Any:
    profile = load_profile("designer", [
        "engine.compile=false", "queue.depth=4", "watchdog.interval_s=1",
        "watchdog.leak_threshold_mib=256", "watchdog.leak_consecutive_jobs=3",
        "watchdog.heartbeat_interval_s=0.5",
    ])
    return config_from_mapping({
        "profile": profile.model_dump(mode="json"),
        "paths": {k: str(root / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": engine, "faults": {"inner": "synthetic", "job_seconds": 0.02,
                                               "leak_mib_per_job": leak_mib, "every_incarnation": False}},
        "log_format": "json",
    }, "soak config")


def _slope(ys: list[float]) -> float:
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / den


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * (resource.getpagesize() // 1024)


async def soak(minutes: float, engine: str, leak_mib: float, size: int) -> dict[str, Any]:
    """Run the soak and return its summary."""
    root = Path(tempfile.mkdtemp(prefix="zitops-soak-"))
    d = Dispatcher(_config(root, engine, leak_mib))
    await d.start()
    allocated: list[tuple[int, float]] = []  # (incarnation, MiB) after each job
    samples: list[tuple[float, int, int]] = []  # (t, rss KiB, fds)
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + minutes * 60
    seen_jobs = 0
    seed = 0
    pending: list[str] = []
    try:
        while time.monotonic() < deadline:
            while len(pending) < 3:
                seed += 1
                req = GenerationRequest(prompt="soak", seeds=(seed,), width=size, height=size, steps=2)
                pending.append((await d.submit(req)).id)
            rec = await d.wait(pending.pop(0), 120)
            outcomes[rec.status.value] = outcomes.get(rec.status.value, 0) + 1
            slot = d.pool.slots[0]
            if slot.memory is not None and slot.jobs_total != seen_jobs:
                seen_jobs = slot.jobs_total
                allocated.append((slot.incarnation, slot.memory.allocated_mib))
            if sum(outcomes.values()) % 50 == 0:
                samples.append((time.monotonic(), _rss_kib(), _fds()))
        for job_id in pending:
            rec = await d.wait(job_id, 120)
            outcomes[rec.status.value] = outcomes.get(rec.status.value, 0) + 1
    finally:
        await d.close()
    lost = sum(v for k, v in outcomes.items() if k != JobStatus.SUCCEEDED.value)
    warm = allocated[max(1, len(allocated) // 10):]
    first_inc = [a for inc, a in warm if inc == warm[0][0]] if warm else []
    recycles = [e for e in d.pool.events if e["kind"] == "recycle"]
    return {
        "engine": engine, "leak_mib_per_job": leak_mib, "minutes": minutes,
        "jobs": sum(outcomes.values()), "outcomes": outcomes, "jobs_lost": lost,
        "allocated_mib_after_warmup": {
            "first": warm[0][1] if warm else None, "last": warm[-1][1] if warm else None,
            "min": min((a for _, a in warm), default=None), "max": max((a for _, a in warm), default=None),
            "slope_mib_per_job_first_incarnation": round(_slope(first_inc), 4),
        },
        "recycles": [{k: e.get(k) for k in ("policy", "reason", "jobs_done")} for e in recycles],
        "leak_caught": any(e.get("policy") == "leak" for e in recycles),
        "agent_rss_mib": [round(s[1] / 1024, 1) for s in samples[:: max(1, len(samples) // 10)]],
        "agent_open_fds": [s[2] for s in samples[:: max(1, len(samples) // 10)]],
    }


def main() -> None:
    """Parse arguments, soak, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--engine", choices=("faulty", "diffusers"), default="faulty")
    ap.add_argument("--leak-mib", type=float, default=0.0, help="fault engine leak per job (negative control)")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(soak(args.minutes, args.engine, args.leak_mib, args.size)), indent=1))


if __name__ == "__main__":
    main()
