"""``zitops doctor`` on a running deployment: is the agent on the port its own, and is it well?

The port check of a deployment whose agent is up would fail (the agent holds
the port). :func:`own_agent` tells that case apart: the process listening on
the port runs ``zitops agent --config`` with this very config file. Then the
live checks ask that agent (over loopback, with the deployment's token) for
readiness, workers, VRAM against the profile's measured peak, and recent
failures. Linux only (``/proc``); elsewhere no agent is recognised as its own.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from zitops.preflight.doctor_model import Check, Setup

VRAM_SLACK = 1.10
"""A worker may reserve up to 10% over the profile's measured peak (allocator rounding) before it fails."""
RECENT_S = 3600.0
"""Failures this recent make the failures check a warning."""


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def listener_pids(port: int) -> list[int]:
    """The processes (that this user may inspect) holding a listening socket on ``port``."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        pids.append(int(entry.name))
                        break
    return pids


def runs_config(pid: int, config_file: Path) -> bool:
    """True when process ``pid`` is `zitops agent --config` with this very config file."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    if "agent" not in argv or "--config" not in argv[:-1]:
        return False
    named = Path(argv[argv.index("--config") + 1])
    with contextlib.suppress(OSError):
        return (cwd / named).samefile(config_file)
    return False


def own_agent(setup: Setup) -> int | None:
    """The pid of this deployment's own agent when it is the one listening on the port, else None."""
    if setup.config_file is None:
        return None
    for pid in listener_pids(setup.port):
        if runs_config(pid, setup.config_file):
            return pid
    return None


def _get(url: str, token: str | None) -> tuple[int, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10.0)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def live_checks(setup: Setup, base_url: str, token: str | None, need_gib: float) -> list[Check]:
    """Ask the running agent: readyz, workers, VRAM against the profile's peak, recent failures."""
    import httpx

    try:
        code, ready = _get(base_url + "/readyz", token)
        status_code, status = _get(base_url + "/status", token)
    except httpx.HTTPError as exc:
        return [Check("readyz", False, f"{base_url} did not answer: {type(exc).__name__}",
                      fix="zitops logs --level error; is the agent stuck?")]
    reasons = "; ".join(map(str, (ready or {}).get("reasons") or [])) if isinstance(ready, dict) else ""
    out = [Check("readyz", code == 200, "ready" if code == 200 else f"{code}: {reasons or 'no reason given'}",
                 fix=None if code == 200 else "zitops status and zitops logs --level warning say why")]
    if status_code != 200 or not isinstance(status, dict):
        out.append(Check("workers", False, f"/status answered {status_code}",
                         fix="run doctor as a user who can read the deployment's tokens file"))
        return out
    out.append(_workers(status))
    out.append(_vram(status, need_gib))
    out.append(_failures(status))
    return out


def _workers(status: dict[str, Any]) -> Check:
    workers = status.get("workers") or []
    states = [str(w.get("state")) for w in workers]
    serving = [s for s in states if s in ("ready", "busy")]
    detail = f"{len(serving)} of {len(workers)} serving ({', '.join(states) or 'none'})"
    # A recycle or a warming successor is normal for a while: a warning; no serving worker fails.
    return Check("workers", bool(serving), detail, warning=len(serving) < len(workers),
                 fix=None if serving else "zitops status shows each worker's last exit; zitops logs --level error")


def _vram(status: dict[str, Any], need_gib: float) -> Check:
    gpu_workers = [w for w in status.get("workers") or [] if w.get("gpu") is not None]
    if not gpu_workers:
        return Check("vram", True, "n/a (CPU workers)")
    worst = 0.0
    for w in gpu_workers:
        vram = w.get("vram") or {}
        held = vram.get("reserved_mib") or vram.get("nvml_used_mib") or 0.0
        worst = max(worst, float(held) / 1024)
    bound = need_gib * VRAM_SLACK
    ok = worst <= bound
    return Check("vram", ok, f"largest worker holds {worst:.1f} GiB; the profile's measured peak is "
                 f"{need_gib:.1f} GiB", fix=None if ok else
                 "a leak or a larger request than the profile: see zitops status; the watchdog recycles "
                 "a worker past its drift limit")


def _failures(status: dict[str, Any]) -> Check:
    now = time.time()
    recent = [f for f in status.get("recent_failures") or []
              if isinstance(f.get("ts"), (int, float)) and now - f["ts"] <= RECENT_S]
    if not recent:
        return Check("recent failures", True, "none in the last hour")
    last = recent[0]
    return Check("recent failures", True, f"{len(recent)} in the last hour; latest: "
                 f"{last.get('exc_type', '?')}: {' '.join(str(last.get('message', '')).split())[:80]}",
                 warning=True)
