"""Soak benchmark: is a worker's memory flat over a long run, and is a leak caught?

Not part of CI. Run it by hand (it takes ``--minutes`` plus up to
``--control-minutes``):

    python benchmarks/soak.py --minutes 10 [--json soak.json]

1. **Soak.** A real ``zitops agent`` (disposable deployment, loopback, the
   fault engine with no fault armed: synthetic pixels, no leak) runs jobs one
   after another. After each job it samples, from /status, each worker's
   allocated and reserved MiB (the same reporting path the real engine uses)
   and, from /proc, the worker's and the agent's resident set size. It prints
   a table over time and a verdict: after warm-up, allocated memory must be
   flat (max drift within ``--tolerance-mib``) and no worker recycled.
2. **Negative control.** The same agent setup with an engine that leaks
   ``--leak-mib`` per job and the profile's default leak policy. The leak
   must be caught: a ``recycle`` event with policy ``leak`` must appear.

Exit code 0 only when both verdicts hold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zitops.drill import AgentProcess, build_deployment, free_port

SETS = ("generation.width=64", "generation.height=64", "generation.steps=2", "queue.drain_timeout_s=10")


def rss_mib(pid: int | None) -> float | None:
    """Resident set size of ``pid`` in MiB, from /proc (None when it is gone)."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_one(agent: AgentProcess, seed: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Submit one job and wait until it is final; its record."""
    code, data, retry = agent.submit({"prompt": "soak", "seed": seed, "width": 64, "height": 64, "steps": 2})
    if code != 202:
        return {"status": f"refused HTTP {code}", "error": str(data)}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = agent.job(data["id"])
        if record["status"] in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.01)
    return {"status": "timeout", "error": f"not final after {timeout_s:g}s"}


def fit(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def soak_phase(out: Path, minutes: float, faults: dict[str, Any], stop_on_leak: bool, label: str) -> dict[str, Any]:
    """Run jobs for ``minutes`` against a fresh agent; every sample, failures and recovery events."""
    port = free_port()
    config_path, _ = build_deployment(out, port, faults, SETS)
    agent = AgentProcess(config_path, port, out / "agent.out")
    samples: list[dict[str, Any]] = []
    torch_in_agent = False
    failures: list[str] = []
    events: list[dict[str, Any]] = []
    try:
        agent.wait_ready(60.0)
        start = time.monotonic()
        deadline = start + minutes * 60.0
        next_note = start + 60.0
        seed = 0
        while time.monotonic() < deadline:
            record = run_one(agent, seed)
            seed += 1
            if record["status"] != "succeeded":
                failures.append(f"{record['status']}: {record.get('error')}")
            st = agent.status()
            t = time.monotonic() - start
            for w in st["workers"]:
                samples.append({"t": round(t, 2), "job": seed, "worker": w["id"], "incarnation": w["incarnation"],
                                "pid": w["pid"], "allocated_mib": w["vram"]["allocated_mib"],
                                "reserved_mib": w["vram"]["reserved_mib"], "worker_rss_mib": rss_mib(w["pid"]),
                                "agent_rss_mib": rss_mib(agent.pid)})
            events = [e for e in st.get("recoveries", []) if e["kind"] in ("recycle", "crash", "kill", "flap_limit")]
            if stop_on_leak and any(e.get("policy") == "leak" for e in events):
                break
            if time.monotonic() >= next_note:
                s = samples[-1]
                print(f"[{label}] {t / 60:5.1f} min  {seed} jobs  allocated {s['allocated_mib']} MiB  "
                      f"worker RSS {s['worker_rss_mib']:.1f} MiB", flush=True)
                next_note += 60.0
        # The agent must never load torch (only workers do); a torch object
        # pickled into a worker message would load it on unpickling.
        torch_in_agent = "libtorch" in Path(f"/proc/{agent.pid}/maps").read_text()
    finally:
        agent.stop()
    return {"samples": samples, "failures": failures, "events": events, "jobs": seed,
            "torch_in_agent": torch_in_agent,
            "seconds": round(samples[-1]["t"], 1) if samples else 0.0}


def table(samples: list[dict[str, Any]], rows: int) -> list[str]:
    """Samples grouped into ``rows`` time buckets."""
    if not samples:
        return ["(no samples)"]
    end = samples[-1]["t"] or 1.0
    lines = [f"{'until':>8} {'jobs':>6} {'alloc min':>10} {'alloc max':>10} {'reserved':>9} "
             f"{'worker RSS':>11} {'agent RSS':>10} {'incarn.':>7}"]
    for i in range(rows):
        lo, hi = end * i / rows, end * (i + 1) / rows
        bucket = [s for s in samples if lo < s["t"] <= hi or (i == 0 and s["t"] == 0)]
        if not bucket:
            continue
        alloc = [s["allocated_mib"] for s in bucket if s["allocated_mib"] is not None]
        last = bucket[-1]
        lines.append(f"{hi / 60:7.1f}m {last['job']:>6} {min(alloc):>10.1f} {max(alloc):>10.1f} "
                     f"{max(s['reserved_mib'] or 0 for s in bucket):>9.1f} {last['worker_rss_mib'] or 0:>11.1f} "
                     f"{last['agent_rss_mib'] or 0:>10.1f} {last['incarnation']:>7}")
    return lines


def verdict(samples: list[dict[str, Any]], warmup_fraction: float, tolerance_mib: float,
            rss_tolerance_mib: float) -> dict[str, Any]:
    """Slope and drift after warm-up, for allocated MiB and the worker's RSS."""
    end = samples[-1]["t"] if samples else 0.0
    warm = [s for s in samples if s["t"] >= end * warmup_fraction and s["job"] > 10]
    out: dict[str, Any] = {"warmup_s": round(end * warmup_fraction, 1), "samples_after_warmup": len(warm)}
    for key, tol in (("allocated_mib", tolerance_mib), ("worker_rss_mib", rss_tolerance_mib),
                     ("agent_rss_mib", None)):
        pts = [(s["t"], s[key]) for s in warm if s[key] is not None]
        if not pts:
            continue
        ys = [y for _, y in pts]
        slope_h = fit([x for x, _ in pts], ys) * 3600.0
        drift = max(ys) - min(ys)
        out[key] = {"first": round(ys[0], 1), "last": round(ys[-1], 1), "min": round(min(ys), 1),
                    "max": round(max(ys), 1), "max_drift_mib": round(drift, 2),
                    "slope_mib_per_hour": round(slope_h, 2)}
        if tol is not None:
            out[key]["flat"] = drift <= tol
            out[key]["tolerance_mib"] = tol
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the soak and the negative control; print the tables and verdicts."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--minutes", type=float, default=10.0, help="soak length (default 10)")
    ap.add_argument("--control-minutes", type=float, default=3.0, help="most time for the leak to be caught")
    ap.add_argument("--job-seconds", type=float, default=0.2, help="fault engine time per job")
    ap.add_argument("--inner", choices=("synthetic", "diffusers"), default="synthetic",
                    help="what makes the pixels: seeded noise, or the real tiny diffusers pipeline")
    ap.add_argument("--leak-mib", type=float, default=64.0, help="the control's leak per job")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the soak that counts as warm-up")
    ap.add_argument("--tolerance-mib", type=float, default=1.0, help="most allocated drift after warm-up")
    ap.add_argument("--rss-tolerance-mib", type=float, default=32.0, help="most worker RSS drift after warm-up")
    ap.add_argument("--rows", type=int, default=10, help="table rows")
    ap.add_argument("--json", type=Path, default=None, help="also write every sample and verdict here")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="zitops-soak-"))
    try:
        print(f"soak: {args.minutes:g} min, leak-free fault engine ({args.inner} pixels), "
              f"job_seconds {args.job_seconds:g}", flush=True)
        clean = soak_phase(root / "clean", args.minutes, {"job_seconds": args.job_seconds, "inner": args.inner},
                           False, "soak")
        print(f"control: leaking {args.leak_mib:g} MiB per job, default leak policy", flush=True)
        control = soak_phase(root / "control", args.control_minutes,
                             {"job_seconds": args.job_seconds, "inner": args.inner,
                              "leak_mib_per_job": args.leak_mib}, True, "control")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    v = verdict(clean["samples"], args.warmup, args.tolerance_mib, args.rss_tolerance_mib)
    clean_ok = (bool(v.get("allocated_mib", {}).get("flat")) and not clean["events"] and not clean["failures"])
    leak = next((e for e in control["events"] if e.get("policy") == "leak"), None)
    print()
    print(f"soak: {clean['jobs']} jobs in {clean['seconds'] / 60:.1f} min, {len(clean['failures'])} failed, "
          f"{len(clean['events'])} recoveries")
    for line in table(clean["samples"], args.rows):
        print("  " + line)
    for key in ("allocated_mib", "worker_rss_mib", "agent_rss_mib"):
        if key in v:
            d = v[key]
            flat = "" if "flat" not in d else ("  FLAT" if d["flat"] else "  NOT FLAT")
            print(f"  {key:<15} {d['first']} -> {d['last']} (min {d['min']}, max {d['max']}), "
                  f"max drift {d['max_drift_mib']} MiB, slope {d['slope_mib_per_hour']} MiB/h{flat}")
    print(f"  agent process loaded torch: {'YES (it must not)' if clean['torch_in_agent'] else 'no'}")
    print(f"  verdict: {'PASS: allocated memory is flat after warm-up' if clean_ok else 'FAIL'}")
    print(f"control: {control['jobs']} jobs in {control['seconds']:.1f} s")
    if leak:
        print(f"  verdict: PASS: leak caught after {leak.get('jobs_done')} jobs "
              f"(allocated {leak.get('allocated_mib')} MiB): {leak['reason']}")
    else:
        print("  verdict: FAIL: no leak recycle within the control's time")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "clean": clean,
                                         "control": control, "verdict": v, "clean_ok": clean_ok,
                                         "leak_caught": leak}, indent=1))
    return 0 if clean_ok and leak else 1


if __name__ == "__main__":
    sys.exit(main())
