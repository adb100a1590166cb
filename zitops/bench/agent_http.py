"""The agent path: a real ``zitops agent`` on 127.0.0.1, timed end to end over HTTP.

The bench writes a config.yaml with the same resolved profile and model,
starts ``zitops agent`` as a child process on a free loopback port, waits for
``/readyz`` (that wait is the worker's load time), and times synchronous
``POST /v1/images/generations`` calls, which include the agent's PNG
encoding and the base64 response. The child is always stopped (SIGTERM, then
SIGKILL) before this returns. torch-free.

Agent overhead is measured per request, paired: the client's end-to-end time
(request sent to last body byte received) minus the engine seconds that the
same request's ``Server-Timing`` header reports. Both come from one request,
so the engine's run-to-run noise cancels out (docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from zitops.bench.report import PathResult
from zitops.bench.restart import measure_restart, settle_spare, without_backoff
from zitops.config import config_from_mapping, config_to_dict
from zitops.engine.request import GenerationRequest
from zitops.errors import AgentUnavailable
from zitops.profile import Profile

STOP_GRACE_S = 20.0

_METRIC = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:;(.*))?$")
_DUR = re.compile(r"(?:^|;)\s*dur\s*=\s*\"?([0-9.eE+-]+)\"?")


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing`` -> {metric: seconds}; metrics without a ``dur`` and malformed entries are skipped."""
    out: dict[str, float] = {}
    for entry in (header or "").split(","):
        m = _METRIC.match(entry)
        if not m:
            continue
        dur = _DUR.search(m.group(2) or "")
        if dur:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = float(dur.group(1)) / 1000.0
    return out


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; values must not be empty."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def overhead_summary(e2e_s: list[float], stages: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Paired overhead (client e2e - that request's engine seconds) and per-stage medians, in ms."""
    paired = [(t - st["engine"]) * 1000.0 for t, st in zip(e2e_s, stages, strict=True) if "engine" in st]
    names = sorted({k for st in stages for k in st})
    out: dict[str, Any] = {
        "overhead_ms": None, "overhead_p90_ms": None, "overhead_samples": len(paired),
        "stages_median_ms": {k: round(statistics.median(st[k] for st in stages if k in st) * 1000.0, 2)
                             for k in names},
    }
    if paired:
        out["overhead_ms"] = round(statistics.median(paired), 2)
        out["overhead_p90_ms"] = round(percentile(paired, 0.9), 2)
        out["overhead_all_ms"] = [round(v, 2) for v in paired]
        totals = [(t - st["total"]) * 1000.0 for t, st in zip(e2e_s, stages, strict=True) if "total" in st]
        if totals:
            # What the server's own "total" cannot see: loopback HTTP and the body's transfer.
            out["client_minus_server_total_ms"] = round(statistics.median(totals), 2)
    return out


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(profile: Profile, model: str, workdir: Path, port: int, *, cache_dir: Path,
                 state_dir: Path, engine: Mapping[str, Any] | None = None,
                 gpus: list[int] | str = "auto") -> Path:
    """A minimal agent config.yaml under ``workdir`` for ``profile`` and ``model`` on 127.0.0.1:``port``.

    ``engine`` is the config's ``engine:`` section (e.g. the fault engine for CPU overhead runs);
    ``gpus`` its ``gpus:`` (one worker per listed GPU).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "profile": profile.model_dump(mode="json"), "model": model, "host": "127.0.0.1", "port": port,
        "paths": {"state_dir": str(state_dir), "log_dir": str(workdir / "log"),
                  "output_dir": str(workdir / "out"), "cache_dir": str(cache_dir)},
        "log_format": "json", "gpus": gpus,
    }
    if engine is not None:
        data["engine"] = dict(engine)
    cfg = config_from_mapping(data, "bench config")
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), "utf-8")
    return path


@contextlib.contextmanager
def running_agent(config_path: Path, port: int, *, ready_timeout_s: float,
                  env: dict[str, str] | None = None) -> Iterator[tuple[str, float]]:
    """Start ``zitops agent``; yield (base URL, seconds until /readyz said ready); always stop it."""
    import httpx

    log_path = config_path.parent / "agent.stderr"
    cmd = [sys.executable, "-c", "from zitops.cli import main; main()", "agent", "--config", str(config_path)]
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + ready_timeout_s
            ready = False
            with httpx.Client(timeout=5.0) as client:
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        if client.get(f"{url}/readyz").status_code == 200:
                            ready = True
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
            if not ready:
                tail = log_path.read_text("utf-8", "replace").strip().splitlines()[-3:]
                state = f"exited {proc.returncode}" if proc.poll() is not None else "not ready"
                raise AgentUnavailable(f"bench agent {state} after {ready_timeout_s:.0f} s; "
                                       f"last log lines: {' | '.join(tail) or '(none)'}")
            yield url, time.perf_counter() - t0
        finally:
            stop_agent(proc)


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the agent (it stops its workers); SIGKILL its process group if it outlives the grace."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _body(req: GenerationRequest, fmt: str) -> dict[str, Any]:
    return {"prompt": req.prompt, "n": req.batch, "size": f"{req.width}x{req.height}", "seed": req.seeds[0],
            "steps": req.steps, "response_format": "b64_json", "output_format": fmt}


def _find_max(status: Any, key: str) -> float | None:
    """The largest numeric value under ``key`` anywhere in the /status JSON."""
    found: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key and isinstance(v, (int, float)) and not isinstance(v, bool):
                    found.append(float(v))
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(status)
    return max(found) if found else None


def measure_agent(profile: Profile, model: str, req: GenerationRequest, *, runs: int, warmup: int,
                  workdir: Path, cache_dir: Path, state_dir: Path, ready_timeout_s: float = 600.0,
                  request_timeout_s: float = 600.0, fmt: str = "png",
                  engine: Mapping[str, Any] | None = None,
                  tick: Callable[[], None] | None = None) -> tuple[PathResult, bytes | None]:
    """Start an agent, time ``runs`` HTTP generations after ``warmup``; returns the result and the first image."""
    import httpx

    result = PathResult("agent", batch=req.batch)
    result.notes.append(f"POST /v1/images/generations (b64_json {fmt}), loopback, one request at a time; "
                        "overhead = client end to end - that request's Server-Timing engine time")
    result.extra["output_format"] = fmt
    port = free_port()
    config = write_config(without_backoff(profile), model, workdir, port, cache_dir=cache_dir, state_dir=state_dir,
                          engine=engine)
    png: bytes | None = None
    stages: list[dict[str, float]] = []
    each: list[dict[str, float]] = []
    with running_agent(config, port, ready_timeout_s=ready_timeout_s) as (url, ready_s):
        result.setup_s = ready_s
        with httpx.Client(timeout=request_timeout_s) as client:
            for i in range(max(0, warmup) + runs):
                if i == warmup > 0:  # the first job started the standby spare: let its imports finish first
                    settle_spare(client, url)
                t0 = time.perf_counter()
                resp = client.post(f"{url}/v1/images/generations", json=_body(req, fmt))
                # End to end = the last body byte is in; decoding the JSON is the client's own work.
                elapsed = time.perf_counter() - t0
                payload = resp.json()
                if resp.status_code != 200:
                    raise AgentUnavailable(f"bench agent answered {resp.status_code}: {str(payload)[:200]}")
                timing = parse_server_timing(resp.headers.get("server-timing"))
                # Every request's stages, the untimed first ones too: where a first request's extra goes.
                each.append({"e2e": round(elapsed * 1000.0, 2), **{k: round(v * 1000.0, 2) for k, v in timing.items()}})
                if i == 0 and warmup > 0:
                    result.warmup_s = elapsed
                if i >= warmup:
                    result.times_s.append(elapsed)
                    stages.append(timing)
                if tick is not None:
                    tick()
                if png is None:
                    png = base64.b64decode(payload["data"][0]["b64_json"])
            with contextlib.suppress(httpx.HTTPError, ValueError):
                status = client.get(f"{url}/status").json()
                result.peak_vram_mib = _find_max(status, "peak_allocated_mib")
                # /status shows the worker's allocator state, not its peak: report it as such.
                result.extra["worker_reserved_mib"] = _find_max(status, "reserved_mib")
                result.extra["device_used_mib"] = _find_max(status, "device_used_mib")
                result.extra["startup"] = (status.get("workers") or [{}])[0].get("startup")
            try:  # last: it replaces the worker whose memory was just read
                result.extra.update(measure_restart(client, url, _body(req, fmt), timeout_s=ready_timeout_s))
            except (AgentUnavailable, httpx.HTTPError, ValueError, OSError) as exc:
                result.extra["recycle_error"] = f"{type(exc).__name__}: {exc}"
    result.extra.update(overhead_summary(result.times_s, stages))
    result.extra["requests_ms"] = each
    if result.setup_s is not None and result.warmup_s is not None:
        # A recycled worker is back when it is ready and has served its first job.
        result.extra["restart_s"] = round(result.setup_s + result.warmup_s, 2)
    return result, png
