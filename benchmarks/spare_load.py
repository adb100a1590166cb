"""Does building a hot spare slow serving? p50/p90/p99 under N clients while a spare builds, per policy.

    python3 benchmarks/spare_load.py --arch full --profile designer --policies always:60,idle:25 \
        --clients 12 --cache-dir /tmp/zcache --out spare-load.json          # on a GPU
    python3 benchmarks/spare_load.py --model tiny --set engine.warmup=true --clients 4 --seconds 10 \
        --cache-dir /tmp/zc --out s.json                                    # CPU: the harness only

For each ``watchdog.spare_build`` policy in ``--policies`` (``name`` or
``name:seconds``), one agent (``watchdog.hot_spare: true``) starts; the
moment ``/readyz`` says 200, its hot spare starts building (load, compile,
warm-up) and ``--clients`` OpenAI clients post back-to-back requests for
that many seconds (default ``--seconds``). Give ``always`` enough to outlast
the build, so its requests after the spare is ready are the baseline
(``none`` runs an agent without a hot spare instead, at the cost of one more
start). A side thread reads
``/status`` every 0.2 s for the spare's events (start, paused, resumed,
ready, with wall-clock times). Each request is classed by the spare's state
over its span: ``building`` (it overlapped the spare's build while the spare
was not paused), ``paused`` (it overlapped the build only while the spare
waited at its gate) or ``no_build`` (before the start or after the spare was
ready: the baseline). After the load, the bench waits for the spare to be
ready and reports how long its build took once the slot was idle. The
compile cache (``--cache-dir``) is shared: run after a scenario that warmed
it, or the first agent start pays the cold compile. Random weights: speed
only, never quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "a ceramic coffee cup on a wooden table, natural lighting"
SPARE_EVENTS = ("hot_spare_start", "hot_spare_paused", "hot_spare_resumed", "hot_spare_ready", "hot_spare_failed")


def _client(url: str, size: str, until: float, n: int, out: list[dict[str, Any]], lock: threading.Lock) -> None:
    import httpx

    with httpx.Client(timeout=600) as client:
        seed = n * 100_000
        while time.time() < until:
            body = {"prompt": PROMPT, "size": size, "response_format": "b64_json", "seed": seed}
            t0 = time.time()
            ok = client.post(f"{url}/v1/images/generations", json=body).status_code == 200
            with lock:
                out.append({"client": n, "start": t0, "end": time.time(), "ok": ok})
            seed += 1


def _watch(url: str, stop: threading.Event, events: dict[tuple[str, float], dict[str, Any]]) -> None:
    import httpx

    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                for e in client.get(f"{url}/status").json().get("recoveries") or []:
                    if e.get("kind") in SPARE_EVENTS:
                        events[(e["kind"], e["time"])] = e
            except (httpx.HTTPError, ValueError):
                pass
            stop.wait(0.2)


def spans(events: list[dict[str, Any]], end: float) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The spare's (working, paused) spans in wall-clock seconds, from its first start to its first ready."""
    working: list[tuple[float, float]] = []
    paused: list[tuple[float, float]] = []
    since: float | None = None
    state = None
    for e in sorted(events, key=lambda e: e["time"]):
        kind, t = e["kind"], e["time"]
        if kind == "hot_spare_start" and state is None:
            state, since = "working", t
        elif state is not None and since is not None and kind in ("hot_spare_paused", "hot_spare_resumed",
                                                                   "hot_spare_ready", "hot_spare_failed"):
            (working if state == "working" else paused).append((since, t))
            state, since = ("paused" if kind == "hot_spare_paused" else "working"), t
            if kind in ("hot_spare_ready", "hot_spare_failed"):
                return working, paused
    if state is not None and since is not None:
        (working if state == "working" else paused).append((since, end))
    return working, paused


def _overlaps(a: float, b: float, spans_: list[tuple[float, float]]) -> bool:
    return any(a < e and s < b for s, e in spans_)


def summary(seconds: list[float]) -> dict[str, Any]:
    """Count, p50, p90, p99 and max of request seconds (None when there are none)."""
    from zitops.bench.agent_http import percentile

    if not seconds:
        return {"n": 0}
    return {"n": len(seconds), **{f"p{q}": round(percentile(seconds, q / 100), 3) for q in (50, 90, 99)},
            "max": round(max(seconds), 3)}


def run_policy(args: argparse.Namespace, policy: str, seconds: float, work: Path) -> dict[str, Any]:
    """One agent with ``watchdog.spare_build: policy`` (``none``: no hot spare): the load, then the spare's end."""
    from zitops.bench.agent_http import free_port, running_agent, write_config
    from zitops.engine.loader import FULL_RANDOM
    from zitops.profile import load_profile

    sets = ["watchdog.hot_spare=false"] if policy == "none" else ["watchdog.hot_spare=true",
                                                                   f"watchdog.spare_build={policy}"]
    profile = load_profile(args.profile, [*sets, *args.set])
    model = FULL_RANDOM if args.arch == "full" else args.model
    size = f"{profile.generation.width}x{profile.generation.height}"
    port = free_port()
    config = write_config(profile, model, work / policy, port, cache_dir=Path(args.cache_dir),
                          state_dir=work / policy / "state")
    done: list[dict[str, Any]] = []
    events: dict[tuple[str, float], dict[str, Any]] = {}
    lock, stop = threading.Lock(), threading.Event()
    with running_agent(config, port, ready_timeout_s=args.ready_timeout) as (url, ready_s):
        t_load = time.time()
        watcher = threading.Thread(target=_watch, args=(url, stop, events), daemon=True)
        watcher.start()
        clients = [threading.Thread(target=_client, args=(url, size, t_load + seconds, n, done, lock))
                   for n in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        t_idle = time.time()
        deadline = time.monotonic() + (args.spare_timeout if policy != "none" else 0)
        while time.monotonic() < deadline and not any(k == "hot_spare_ready" for k, _ in events):
            time.sleep(0.2)
        stop.set()
        watcher.join(5)
    evs = sorted(events.values(), key=lambda e: e["time"])
    working, paused = spans(evs, time.time())
    classes: dict[str, list[float]] = {"building": [], "paused": [], "no_build": []}
    for r in done:
        if not r["ok"]:
            continue
        cls = ("building" if _overlaps(r["start"], r["end"], working)
               else "paused" if _overlaps(r["start"], r["end"], paused) else "no_build")
        classes[cls].append(r["end"] - r["start"])
    ready_at = next((e["time"] for e in evs if e["kind"] == "hot_spare_ready"), None)
    return {
        "policy": policy, "size": size, "clients": args.clients, "seconds": seconds,
        "ready_s": round(ready_s, 2), "failed": sum(1 for r in done if not r["ok"]),
        "all": summary([r["end"] - r["start"] for r in done if r["ok"]]),
        **{k: summary(v) for k, v in classes.items()},
        "spare_working_s": round(sum(e - s for s, e in working), 2),
        "spare_paused_s": round(sum(e - s for s, e in paused), 2),
        "spare_ready_after_load_s": round(ready_at - t_idle, 2) if ready_at and ready_at > t_idle else None,
        "spare_ready_during_load": bool(ready_at and ready_at <= t_idle),
        "events": [{k: e.get(k) for k in ("kind", "time", "done", "waited_s", "build_s")} for e in evs],
    }


def main() -> None:
    """Run each policy; print and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--policies", default="always:60,idle:25", help="name[:seconds],...: always, idle, none")
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--workdir", default="/tmp/zspare")
    ap.add_argument("--ready-timeout", type=float, default=300)
    ap.add_argument("--spare-timeout", type=float, default=120, help="after the load, wait this long for the spare")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import shutil

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {"profile": args.profile, "sets": args.set, "date": time.strftime("%Y-%m-%d"),
                              "policies": {}}
    for item in [p for p in args.policies.split(",") if p]:
        policy, _, secs = item.partition(":")
        report = run_policy(args, policy, float(secs) if secs else args.seconds, work)
        result["policies"][policy] = report
        print(json.dumps({policy: {k: v for k, v in report.items() if k != "events"}}), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1), "utf-8")
    ps = result["policies"]
    # The baseline: requests that overlapped no build (an agent without a spare, or after its spare was ready).
    base = [ps[p]["no_build"]["p99"] for p in ("none", "always") if p in ps and ps[p]["no_build"].get("n", 0) >= 10]
    if base:
        result["p99_no_build"] = base[0]
        for p, cls in (("always", "building"), ("idle", "all")):
            if p in ps and ps[p][cls].get("p99"):
                result[f"p99_{p}_{cls}_over_no_build"] = round(ps[p][cls]["p99"] / base[0], 2)
        print(json.dumps({k: v for k, v in result.items() if k.startswith("p99_")}), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1), "utf-8")


if __name__ == "__main__":
    main()
