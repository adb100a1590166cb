"""The soak's pass rule, over its per-job samples (benchmarks/soak.py), and its plot.

Pure functions over plain dicts, torch-free; matplotlib only inside :func:`plot`, and optional.

The rule (issue 29, after Triton's ``L0_memory_growth``):

- **growth**: after warm-up, every memory series grows less than 100 MB
  (``GROWTH_LIMIT_MIB``). Growth is the median of the last quarter of the
  samples minus the median of the first quarter (after warm-up), so one
  spike (a large image's peak, a restarted worker) neither passes nor fails a
  run on its own. Counts (open file descriptors, threads) have their own
  limit: ``COUNT_LIMIT`` or 10 % of the first quarter, whichever is larger;
- **lost**: no job is lost: every submitted job reached a final state, and
  no job failed or was refused (a cancelled job is one the soak meant to stop);
- **drift**: the p99 latency of the last quarter is within 10 % of the first
  quarter's. Sizes and kinds are random, so latency is compared per
  megapixel-step (seconds / (width x height / 1e6 x steps)), which the mix
  does not change from quarter to quarter; the raw p99s are reported too.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

GROWTH_LIMIT_MIB = 100.0 * 1e6 / 2**20
"""100 MB (Triton's limit) in MiB: 95.4."""

COUNT_LIMIT = 8
"""Most growth of a count series (fds, threads) when 10 % of its start is less."""

DRIFT_LIMIT = 0.10
"""Most p99 drift, last quarter against the first."""

MEMORY_SERIES = ("agent_rss_mib", "worker_rss_mib", "allocated_mib", "reserved_mib", "worker_nvml_mib", "store_mib")
COUNT_SERIES = ("agent_fds", "worker_fds", "agent_threads", "worker_threads")
INFO_SERIES = ("nvml_used_mib", "gpu_processes")
"""Plotted and reported, not judged: NVML's device-wide figure counts a hot spare the pool builds on purpose
(after a kill: +25 GB on the 2026-12-07 H100 run); the serving worker's own is ``worker_nvml_mib``."""


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation; ``values`` must not be empty."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def quarters(items: list[Any]) -> tuple[list[Any], list[Any]]:
    """The first and the last quarter of ``items`` (at least one item each when there are any)."""
    n = max(1, len(items) // 4)
    return items[:n], items[-n:]


def growth(samples: list[dict[str, Any]], key: str, limit: float) -> dict[str, Any] | None:
    """One series' growth after warm-up: first and last quarter medians, the difference, ok; None without data."""
    values = [float(s[key]) for s in samples if isinstance(s.get(key), (int, float))]
    if len(values) < 2:
        return None
    first, last = quarters(values)
    start, end = statistics.median(first), statistics.median(last)
    return {"first_quarter_median": round(start, 2), "last_quarter_median": round(end, 2),
            "growth": round(end - start, 2), "max": round(max(values), 2), "min": round(min(values), 2),
            "limit": round(limit, 2), "ok": end - start < limit, "samples": len(values)}


def drift(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """p99 drift of the succeeded jobs' latency per megapixel-step, first quarter to last; None without data."""
    done = [s for s in samples if s.get("status") == "succeeded" and s.get("latency_s") and s.get("mpx_steps")
            and not s.get("killed") and s.get("kind") not in ("cancel", "kill")]
    if len(done) < 8:
        return None
    first, last = quarters(done)
    norm = [quantile([s["latency_s"] / s["mpx_steps"] for s in part], 0.99) for part in (first, last)]
    raw = [quantile([s["latency_s"] for s in part], 0.99) for part in (first, last)]
    change = (norm[1] - norm[0]) / norm[0] if norm[0] > 0 else 0.0
    return {"p99_s_per_mpx_step_first": round(norm[0], 4), "p99_s_per_mpx_step_last": round(norm[1], 4),
            "p99_s_first": round(raw[0], 3), "p99_s_last": round(raw[1], 3), "drift": round(change, 4),
            "limit": DRIFT_LIMIT, "ok": change <= DRIFT_LIMIT, "jobs_per_quarter": len(first)}


def verdict(samples: list[dict[str, Any]], warmup_jobs: int) -> dict[str, Any]:
    """The whole rule over every sample so far (all calls of a resumed run)."""
    warm = [s for s in samples if s["job"] > warmup_jobs]
    series: dict[str, Any] = {}
    for key in MEMORY_SERIES:
        g = growth(warm, key, GROWTH_LIMIT_MIB)
        if g is not None:
            series[key] = g
    info = {key: g for key in INFO_SERIES if (g := growth(warm, key, float("inf"))) is not None}
    for key in COUNT_SERIES:
        values = [s[key] for s in warm if isinstance(s.get(key), (int, float))]
        if values:
            g = growth(warm, key, max(COUNT_LIMIT, 0.1 * statistics.median(quarters(values)[0])))
            if g is not None:
                series[key] = g
    lost = [s["job"] for s in samples if s.get("status") in ("lost", "timeout", "missing")]
    failed = [s["job"] for s in samples if s.get("status") in ("failed", "refused")]
    lat = drift(warm)
    ok = (bool(series) and all(v["ok"] for v in series.values()) and not lost and not failed
          and lat is not None and lat["ok"])
    return {"jobs": len(samples), "warmup_jobs": warmup_jobs, "series": series, "info": info, "lost": lost,
            "failed": failed, "latency": lat, "pass": ok}


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Every series against the job number, one panel each, as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = [k for k in (*MEMORY_SERIES, *INFO_SERIES, *COUNT_SERIES)
            if any(isinstance(s.get(k), (int, float)) for s in samples)] + ["latency_s"]
    cols = 3
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.6 * rows), squeeze=False)
    kills = [s["job"] for s in samples if s.get("killed")]
    calls = [b["job"] for a, b in zip(samples, samples[1:], strict=False) if a.get("call") != b.get("call")]
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(s["job"], s[key]) for s in samples if isinstance(s.get(key), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
        for k in kills:
            ax.axvline(k, color="red", lw=0.4, alpha=0.5)
        for k in calls:
            ax.axvline(k, color="gray", lw=0.6, ls="--", alpha=0.7)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title + " (red: kill -9 of the worker; dashed: a new call, the agent restarted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
