"""A worker's restart on a real agent: kill -9 its worker and time the way back.

    python3 benchmarks/restart_probe.py --arch full --profile designer --cache-dir DIR --out restart.json

Starts ``zitops agent`` (127.0.0.1, free port) with the profile and model the
bench uses, waits for ready, serves one image (the first start compiles or
loads the compile cache), then ``--kills`` times: SIGKILL the worker, poll
``/readyz`` every 20 ms until it is ready again, serve one image, and record
kill-to-ready, kill-to-first-image and the new worker's own start-up phases
from ``/status``. The crash restart's backoff delay (watchdog) is part of
kill-to-ready; the phases show the worker's own share. Prints and writes JSON.
Needs no GPU with ``--model tiny``; with ``--arch full`` it needs one.
``--set watchdog.standby_preload=false`` times a spare that only imports;
``--set watchdog.hot_spare=true`` waits before each kill until the hot spare
(a loaded, warmed second worker) is ready, and records its takeover.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _worker(status: dict[str, Any]) -> dict[str, Any]:
    workers = status.get("workers") or []
    return dict(workers[0]) if workers else {}


def _settle_hot_spare(client: Any, url: str, timeout_s: float = 600.0) -> dict[str, Any] | None:
    """Wait until the hot spare is ready, when one is on or being built; its /status entry, or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        hot = client.get(f"{url}/status").json().get("hot_spare") or {}
        spares = hot.get("spares") or []
        if hot.get("setting") is False or (hot.get("setting") == "auto" and not spares):
            return None  # off, or auto without room for a second copy
        if any(s.get("state") == "ready" for s in spares):
            return dict(spares[0])
        if time.monotonic() > deadline:
            raise SystemExit(f"the hot spare was not ready within {timeout_s:g} s: {hot}")
        time.sleep(0.2)


def main() -> None:
    """Run the probe."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="profile override, e.g. watchdog.standby_preload=false (repeatable)")
    args = ap.parse_args()

    import httpx

    from zitops.bench.agent_http import free_port, running_agent, write_config
    from zitops.bench.restart import settle_spare
    from zitops.engine.loader import FULL_RANDOM
    from zitops.profile import load_profile

    profile = load_profile(args.profile, args.set)
    model = FULL_RANDOM if args.arch == "full" else args.model
    size = f"{args.width or profile.generation.width}x{args.height or profile.generation.height}"
    body = {"prompt": "a red fox in fresh snow", "size": size, "response_format": "b64_json", "seed": 7}
    result: dict[str, Any] = {"profile": args.profile, "sets": args.set, "model": model, "size": size,
                              "kills": []}
    with tempfile.TemporaryDirectory(prefix="zitops-restart-") as tmp:
        work = Path(tmp)
        port = free_port()
        config = write_config(profile, model, work, port, cache_dir=Path(args.cache_dir),
                              state_dir=work / "state")
        with running_agent(config, port, ready_timeout_s=600) as (url, ready_s), \
                httpx.Client(timeout=600) as client:
            t0 = time.perf_counter()
            client.post(f"{url}/v1/images/generations", json=body).raise_for_status()
            result["first_start"] = {"ready_s": round(ready_s, 2),
                                     "first_image_s": round(time.perf_counter() - t0, 2),
                                     "worker": _worker(client.get(f"{url}/status").json())}
            for _ in range(args.kills):
                time.sleep(25)  # let a standby spare (if any) start and finish its imports
                settle_spare(client, url)  # and its model preload, when it makes one
                hot = _settle_hot_spare(client, url)
                old = _worker(client.get(f"{url}/status").json())
                t_kill = time.perf_counter()
                os.kill(int(old["pid"]), signal.SIGKILL)
                ready_at = None
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    try:
                        st = client.get(f"{url}/status").json()
                        if client.get(f"{url}/readyz").status_code == 200 and _worker(st).get("pid") != old["pid"]:
                            ready_at = time.perf_counter()
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.02)
                if ready_at is None:
                    raise SystemExit("worker did not come back within 600 s")
                client.post(f"{url}/v1/images/generations", json=body).raise_for_status()
                done = time.perf_counter()
                st = client.get(f"{url}/status").json()
                result["kills"].append({"kill_to_ready_s": round(ready_at - t_kill, 2),
                                        "kill_to_first_image_s": round(done - t_kill, 2),
                                        "worker": _worker(st), "hot_spare": hot,
                                        "took_over": hot is not None and _worker(st).get("pid") == hot["pid"],
                                        "takeovers": [e for e in st.get("recoveries", [])
                                                      if e.get("kind") == "takeover"]})
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1), "utf-8")


if __name__ == "__main__":
    main()
