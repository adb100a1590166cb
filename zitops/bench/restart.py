"""The agent path's restart probe: kill the bench agent's worker, time it back to its first image.

A recycle ends the worker and starts the next one with no backoff; the bench
writes ``watchdog.restart_backoff_s: 0`` so that killing the worker times the
same start (standby spare when the agent keeps one, warm compile cache from
the timed runs). torch-free; the agent runs on this host, so its worker's pid
from ``/status`` can be signalled directly.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from zitops.errors import AgentUnavailable
from zitops.profile import Profile

SPARE_WAIT_S = 180.0
"""How long to wait for the agent's standby spare to finish its imports (and model preload) before the kill."""


def without_backoff(profile: Profile) -> Profile:
    """``profile`` with no restart backoff, so a killed worker restarts as a recycled one does."""
    return profile.model_copy(update={"watchdog": profile.watchdog.model_copy(update={"restart_backoff_s": 0.0})})


def settle_spare(client: Any, url: str, timeout_s: float = SPARE_WAIT_S) -> dict[str, Any]:
    """Wait while the agent's standby spare is still importing or preloading (it shares the CPU); returns /status."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = client.get(f"{url}/status").json()
    while time.monotonic() < deadline and any(
            s.get("state") in ("importing", "loading") for s in status.get("standby", {}).get("spares", [])):
        time.sleep(0.2)
        status = client.get(f"{url}/status").json()
    return status


def _worker(status: dict[str, Any]) -> dict[str, Any]:
    workers = [w for w in status.get("workers", []) if w.get("state") in ("ready", "busy")]
    if not workers:
        raise AgentUnavailable("bench restart probe: the agent has no ready worker")
    return dict(workers[0])


def measure_restart(client: Any, url: str, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Kill the ready worker; seconds to ``/readyz`` again and to the first image, and the new start-up phases."""
    status = settle_spare(client, url)  # time the steady state, not a spare still importing
    old = _worker(status)
    spare = next(iter(status.get("standby", {}).get("spares", [])), None)
    t0 = time.perf_counter()
    os.kill(int(old["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    ready_s: float | None = None
    while time.monotonic() < deadline:
        w = client.get(f"{url}/status").json().get("workers", [{}])[0]
        if w.get("pid") not in (None, old["pid"]) and w.get("state") == "ready" and \
                client.get(f"{url}/readyz").status_code == 200:
            ready_s = time.perf_counter() - t0
            break
        time.sleep(0.05)
    if ready_s is None:
        raise AgentUnavailable(f"bench restart probe: no worker ready {timeout_s:.0f} s after the kill")
    resp = client.post(f"{url}/v1/images/generations", json=body)
    first_image_s = time.perf_counter() - t0
    if resp.status_code != 200:
        raise AgentUnavailable(f"bench restart probe: first job answered {resp.status_code}")
    new = _worker(client.get(f"{url}/status").json())
    return {"recycle_s": round(first_image_s, 3), "recycle_ready_s": round(ready_s, 3),
            "recycle_first_job_s": round(first_image_s - ready_s, 3),
            "recycle_standby": bool(spare and new.get("pid") == spare.get("pid")),
            "recycle_startup": new.get("startup")}
