"""Log bytes per 100 successful jobs: the default tiers against everything at INFO.

Runs a real ``zitops agent`` (fault engine, no faults armed) twice on loopback,
once per tier set, submits the same jobs to each, and prints the bytes the
agent and its workers wrote to their log files (``zitops.log`` +
``worker-*.log``; ``access.log`` is reported apart because it can be turned
off). ``--inner diffusers`` runs the real tiny diffusers pipeline behind the
fault engine, so diffusers/transformers/torch log for real.

    python benchmarks/log_volume.py [--jobs 100] [--inner synthetic|diffusers]

The seed (NOTES.md 5.2) claims -65% from tiers alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import yaml

from zitops.config import config_from_mapping, config_to_dict
from zitops.profile import LogSettings, load_profile

CLI = "from zitops.cli import main; main()"
# Small images for speed; the watchdog keeps its shipped intervals, because
# scheduler chatter per second is part of what the tiers are for.
FAST = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.drain_timeout_s=20"]
ALL_INFO = {name: "INFO" for name in LogSettings().levels} | {"py.warnings": "INFO", "uvicorn": "INFO"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until truthy; raise naming what we waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(root: Path, *, faults: dict[str, Any], sets: list[str], levels: dict[str, str] | None = None,
                 inner: str = "synthetic", job_seconds: float = 0.02) -> tuple[Path, int]:
    """A faulty-engine agent config under ``root``; returns (path, port)."""
    root.mkdir(parents=True, exist_ok=True)
    profile = load_profile("designer", FAST + sets).model_dump(mode="json")
    if levels is not None:
        profile["logging"]["levels"] = levels
    port = free_port()
    cfg = config_from_mapping({
        "profile": profile, "port": port, "gpus": [],
        "paths": {k: str(root / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": "faulty", "faults": {"inner": inner, "job_seconds": job_seconds, **faults}},
        "log_format": "json",
    })
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)), "utf-8")
    return path, port


@contextmanager
def running_agent(config_path: Path, port: int, ready_timeout: float = 180) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start ``zitops agent``, wait for /readyz, and always stop it (and its workers)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    out = (config_path.parent / "agent.out").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", CLI, "agent", "--config", str(config_path)],
                            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}; see {config_path.parent / 'agent.out'}")
            try:
                return httpx.get(url + "/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, ready_timeout, "the agent to be ready")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()


def run_jobs(url: str, n: int, wave: int = 10) -> tuple[int, float]:
    """Submit ``n`` jobs in waves (under the queue cap); return (succeeded, seconds)."""
    ok = 0
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        for first in range(0, n, wave):
            ids = [client.post("/v1/jobs", json={"prompt": f"a red fox, number {i}", "seed": i}).json()["id"]
                   for i in range(first, min(n, first + wave))]
            for job_id in ids:
                # Slow polling: each poll is an access-log line.
                status = wait_for(functools.partial(_final, client, job_id), 600, f"job {job_id}", interval=0.25)
                ok += status == "succeeded"
    return ok, time.monotonic() - start


def _final(client: httpx.Client, job_id: str) -> str | None:
    status = client.get(f"/v1/jobs/{job_id}").json()["status"]
    return str(status) if status in ("succeeded", "failed", "cancelled") else None


def log_bytes(log_dir: Path) -> dict[str, int]:
    """Bytes per kind of log file under ``log_dir`` (rotated files included)."""
    out = {"main": 0, "workers": 0, "access": 0, "failures": 0}
    for p in log_dir.iterdir():
        size = p.stat().st_size
        if p.name.startswith("zitops.log"):
            out["main"] += size
        elif p.name.startswith("worker-"):
            out["workers"] += size
        elif p.name.startswith("access.log"):
            out["access"] += size
        elif p.name.startswith("failures"):
            out["failures"] += size
    return out


def by_logger(log_dir: Path) -> dict[str, int]:
    """Bytes per logger name across the main and worker logs."""
    sizes: dict[str, int] = {}
    for p in list(log_dir.glob("zitops.log*")) + list(log_dir.glob("worker-*.log*")):
        for line in p.read_text("utf-8", "replace").splitlines():
            try:
                name = json.loads(line).get("logger", "?")
            except ValueError:
                name = "(not json)"
            sizes[name] = sizes.get(name, 0) + len(line.encode()) + 1
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def measure(root: Path, levels: dict[str, str] | None, jobs: int, inner: str, job_seconds: float,
            idle_s: float) -> dict[str, Any]:
    """One agent run: start, submit ``jobs``, stop; bytes per 100 successful jobs and per idle hour."""
    config_path, port = write_config(root, faults={}, sets=[], levels=levels, inner=inner,
                                     job_seconds=job_seconds)
    log_dir = root / "log_dir"
    with running_agent(config_path, port) as (_proc, url):
        ok, seconds = run_jobs(url, jobs)
        before = sum(log_bytes(log_dir).values()) - log_bytes(log_dir)["access"]
        time.sleep(idle_s)
        idle = sum(log_bytes(log_dir).values()) - log_bytes(log_dir)["access"] - before
    sizes = log_bytes(log_dir)
    per100 = {k: round(v * 100 / max(ok, 1)) for k, v in sizes.items()}
    return {"succeeded": ok, "seconds": round(seconds, 1), "bytes": sizes, "per_100_jobs": per100,
            "idle_bytes_per_hour": round(idle * 3600 / idle_s) if idle_s else None,
            "by_logger": by_logger(log_dir)}


def main() -> None:
    """Run both tier sets and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--inner", choices=("synthetic", "diffusers"), default="synthetic")
    parser.add_argument("--job-seconds", type=float, default=0.02,
                        help="simulated time per image (synthetic inner); 1.0 is close to a real H100 job")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle after the jobs, to measure")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zitops-logvol-") as tmp:
        tiered = measure(Path(tmp) / "tiers", None, args.jobs, args.inner, args.job_seconds, args.idle)
        info = measure(Path(tmp) / "info", ALL_INFO, args.jobs, args.inner, args.job_seconds, args.idle)
    t = tiered["per_100_jobs"]["main"] + tiered["per_100_jobs"]["workers"]
    i = info["per_100_jobs"]["main"] + info["per_100_jobs"]["workers"]
    result = {"inner": args.inner, "jobs": args.jobs, "default_tiers": tiered, "all_info": info,
              "log_bytes_per_100_jobs": {"default_tiers": t, "all_info": i},
              "reduction_pct": round(100 * (1 - t / i), 1) if i else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"engine: fault engine, inner={args.inner}, job_seconds={args.job_seconds}; {args.jobs} jobs per run")
    for name, run in (("default tiers", tiered), ("everything INFO", info)):
        p = run["per_100_jobs"]
        print(f"{name:16s} ok={run['succeeded']:4d} in {run['seconds']:6.1f}s  per 100 jobs: "
              f"main={p['main']:8d} B  workers={p['workers']:8d} B  (access={p['access']} B, "
              f"failures={p['failures']} B); idle: {run['idle_bytes_per_hour']} B/hour")
        top = ", ".join(f"{k}={v}" for k, v in list(run["by_logger"].items())[:6])
        print(f"{'':16s} by logger (bytes, whole run): {top}")
    print(f"log bytes per 100 successful jobs (main + workers): default tiers {t}, everything INFO {i}; "
          f"reduction {result['reduction_pct']}% (seed claims 65%)")


if __name__ == "__main__":
    main()
