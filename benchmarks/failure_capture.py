"""The 100%-capture check: every injected failure has its record, in both sinks.

Each round starts two real agents with the fault engine and injects one of
each failure kind: an engine error, out-of-memory on a single image, a worker
crash, a hang (job timeout) and ``kill -9`` of a worker mid-job. A failure is
captured when ``failures.jsonl`` AND the SQLite store each hold exactly one
record for that job with the expected kind and action.

    python benchmarks/failure_capture.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from log_volume import running_agent, wait_for, write_config  # noqa: E402

# kind injected -> (record kind, action) the agent must write
EXPECTED = {
    "engine_error": ("job", "fail"),
    "oom": ("oom", "fail"),
    "crash": ("crash", "requeue"),
    "hang": ("hang", "requeue"),
    "kill9": ("killed", "requeue"),
}


def _submit(client: httpx.Client) -> str:
    r = client.post("/v1/jobs", json={"prompt": "capture check: a lighthouse at dusk"})
    r.raise_for_status()
    return str(r.json()["id"])


def _final(client: httpx.Client, job_id: str, timeout: float = 60) -> str:
    def done() -> str | None:
        status = client.get(f"/v1/jobs/{job_id}").json()["status"]
        return str(status) if status in ("succeeded", "failed", "cancelled") else None

    return str(wait_for(done, timeout, f"job {job_id}", interval=0.1))


def round_errors(root: Path) -> dict[str, tuple[str, str]]:
    """Engine error (job 1), single-image OOM (job 2), crash (job 3): injected -> (job id, final status)."""
    cfg, port = write_config(root, faults={"raise_on_job": 1, "oom_above_batch": 0, "crash_on_job": 3},
                             sets=["watchdog.restart_backoff_s=0.2", "watchdog.restart_backoff_max_s=1"])
    out = {}
    with running_agent(cfg, port) as (_proc, url), httpx.Client(base_url=url, timeout=10) as client:
        for kind in ("engine_error", "oom", "crash"):
            job = _submit(client)
            out[kind] = (job, _final(client, job))
        time.sleep(0.5)
    return out


def round_lost(root: Path) -> dict[str, tuple[str, str]]:
    """A hang on job 1 (killed at the job timeout), then kill -9 of the worker mid-job."""
    cfg, port = write_config(root, faults={"hang_on_job": 1}, job_seconds=1.5,
                             sets=["queue.job_timeout_s=4", "watchdog.kill_grace_s=0.5",
                                   "watchdog.restart_backoff_s=0.2", "watchdog.restart_backoff_max_s=1"])
    out = {}
    with running_agent(cfg, port) as (_proc, url), httpx.Client(base_url=url, timeout=10) as client:
        job = _submit(client)
        out["hang"] = (job, _final(client, job))
        job = _submit(client)

        def pid() -> int | None:
            for w in client.get("/status").json()["workers"]:
                if w.get("current_job") == job and w.get("pid"):
                    return int(w["pid"])
            return None

        worker = int(wait_for(pid, 30, "the job to start", interval=0.05))
        time.sleep(0.3)
        os.kill(worker, signal.SIGKILL)
        out["kill9"] = (job, _final(client, job))
        time.sleep(0.5)
    return out


def check(root: Path, injected: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Per injected failure: does each sink hold exactly the expected record?"""
    log_dir, state_dir = root / "log_dir", root / "state_dir"
    jsonl = [json.loads(x) for x in (log_dir / "failures.jsonl").read_text("utf-8").splitlines() if x.strip()] \
        if (log_dir / "failures.jsonl").exists() else []
    sqlite: list[dict[str, Any]] = []
    if (state_dir / "failures.sqlite3").exists():
        # Read the table itself, not FailureStore.list (which falls back to the JSONL).
        with closing(sqlite3.connect(state_dir / "failures.sqlite3")) as conn:
            sqlite = [{"job_id": j, "kind": k, "action": a}
                      for j, k, a in conn.execute("SELECT job_id, kind, action FROM failures")]
    result = {}
    for kind, (job_id, status) in injected.items():
        want = EXPECTED[kind]
        in_jsonl = [(r["kind"], r["action"]) for r in jsonl if r["job_id"] == job_id]
        in_sqlite = [(r["kind"], r["action"]) for r in sqlite if r["job_id"] == job_id]
        result[kind] = {"job_status": status, "jsonl": in_jsonl, "sqlite": in_sqlite,
                        "captured": in_jsonl == [want] and in_sqlite == [want]}
    return result


def main() -> None:
    """Run the rounds and print the capture rate per kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    totals = {kind: [0, 0] for kind in EXPECTED}
    misses = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zitops-capture-") as tmp:
        for n in range(args.rounds):
            for name, fn in (("errors", round_errors), ("lost", round_lost)):
                root = Path(tmp) / f"{name}-{n}"
                for kind, verdict in check(root, fn(root)).items():
                    totals[kind][0] += 1
                    totals[kind][1] += verdict["captured"]
                    if not verdict["captured"]:
                        misses.append({"round": n, "kind": kind, **verdict})
    injected = sum(t[0] for t in totals.values())
    captured = sum(t[1] for t in totals.values())
    for kind, (inj, cap) in totals.items():
        print(f"{kind:13s} injected {inj:3d}  captured {cap:3d}  ({100 * cap / max(inj, 1):.0f}%)")
    print(f"total         injected {injected:3d}  captured {captured:3d}  "
          f"({100 * captured / max(injected, 1):.1f}%) in {time.monotonic() - start:.0f}s")
    for miss in misses:
        print("MISS", json.dumps(miss))
    sys.exit(0 if captured == injected else 1)


if __name__ == "__main__":
    main()
