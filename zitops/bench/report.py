"""Benchmark results: per-path timings, derived rates, the screen table and the JSON file.

torch-free, so the table and JSON logic is testable anywhere.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PATHS = ("baseline", "engine", "agent")
"""What ``zitops bench`` measures: plain diffusers, the zitops engine, the engine behind the agent's HTTP API."""

STAGE_ORDER = ("accept", "queue", "start", "engine", "pack", "transfer", "encode", "store", "wake", "respond",
               "total")
"""Server-Timing stages in table order (docs/api.md)."""

PATH_LABELS = {"baseline": "plain diffusers", "engine": "zitops engine", "agent": "agent (HTTP e2e)"}


@dataclass
class PathResult:
    """One measured path: wall seconds per call (each call makes ``batch`` images)."""

    path: str
    batch: int
    times_s: list[float] = field(default_factory=list)
    setup_s: float | None = None
    warmup_s: float | None = None
    peak_vram_mib: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def s_per_image(self) -> float | None:
        """Median seconds per call divided by the batch."""
        if not self.times_s:
            return None
        return statistics.median(self.times_s) / max(1, self.batch)

    @property
    def images_per_min(self) -> float | None:
        """Throughput at the median."""
        s = self.s_per_image
        return 60.0 / s if s else None

    def to_dict(self, baseline_s: float | None = None) -> dict[str, Any]:
        """JSON-ready, with the speedup over ``baseline_s`` (seconds per image) when known."""
        d = asdict(self)
        s = self.s_per_image
        d["s_per_image"] = _round(s)
        d["images_per_min"] = _round(self.images_per_min, 2)
        d["peak_vram_gib"] = _round(self.peak_vram_mib / 1024 if self.peak_vram_mib else None, 2)
        d["speedup"] = _round(baseline_s / s, 3) if baseline_s and s else None
        d["times_s"] = [round(t, 4) for t in self.times_s]
        return d


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class ProfileRun:
    """All paths measured for one profile (same size, steps, batch and seeds for each)."""

    profile: str
    params: dict[str, Any]
    results: dict[str, PathResult] = field(default_factory=dict)
    sampler_sweep: list[dict[str, Any]] = field(default_factory=list)
    batch_sweep: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    def baseline_s(self) -> float | None:
        """The baseline's seconds per image, if measured."""
        base = self.results.get("baseline")
        return base.s_per_image if base else None

    def agent_overhead_ms(self) -> float | None:
        """The agent's overhead in ms: median over requests of (HTTP end to end - that request's engine time)."""
        agent = self.results.get("agent")
        value = agent.extra.get("overhead_ms") if agent else None
        return float(value) if isinstance(value, (int, float)) else None

    def engine_path_gap_ms(self) -> float | None:
        """Agent path median minus engine path median, in ms: two processes, so engine noise stays in."""
        eng, agent = self.results.get("engine"), self.results.get("agent")
        if not (eng and agent and eng.times_s and agent.times_s):
            return None
        return (statistics.median(agent.times_s) - statistics.median(eng.times_s)) * 1000.0

    def best_batch(self) -> int | None:
        """The batch size with the most images per minute in the batch sweep."""
        rows = [r for r in self.batch_sweep if r.get("images_per_min")]
        if not rows:
            return None
        return int(max(rows, key=lambda r: r["images_per_min"])["batch"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        base = self.baseline_s()
        overhead = self.agent_overhead_ms()
        gap = self.engine_path_gap_ms()
        agent = self.results.get("agent")
        p90 = agent.extra.get("overhead_p90_ms") if agent else None
        return {
            "profile": self.profile, "params": self.params,
            "paths": {name: r.to_dict(base) for name, r in self.results.items()},
            "agent_overhead_ms": None if overhead is None else round(overhead, 1),
            "agent_overhead_p90_ms": p90,
            "agent_stages_median_ms": agent.extra.get("stages_median_ms") if agent else None,
            "agent_minus_engine_path_ms": None if gap is None else round(gap, 1),
            "sampler_sweep": self.sampler_sweep, "batch_sweep": self.batch_sweep,
            "best_batch": self.best_batch(), "checks": self.checks,
        }


@dataclass
class BenchReport:
    """A whole ``zitops bench`` run: where it ran, then one entry per profile."""

    meta: dict[str, Any]
    runs: list[ProfileRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"zitops_bench": 1, **self.meta, "runs": [r.to_dict() for r in self.runs]}

    def write_json(self, path: str | Path) -> Path:
        """Write the report as indented JSON; returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", "utf-8")
        return p


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def render_table(report: BenchReport) -> str:
    """The screen table: one row per profile and path, then overheads and sweeps."""
    meta = report.meta
    lines = [f"zitops bench: {meta.get('card', '?')} | model {meta.get('model', '?')} | "
             f"torch {meta.get('torch', '?')} | diffusers {meta.get('diffusers', '?')} | {meta.get('date', '')}"]
    header = (f"{'profile':<10} {'path':<17} {'size':>9} {'steps':>5} {'batch':>5} {'s/image':>8} "
              f"{'img/min':>8} {'peak GiB':>8} {'setup s':>8} {'warmup s':>8} {'speedup':>7}")
    lines += [header, "-" * len(header)]
    for run in report.runs:
        p = run.params
        base = run.baseline_s()
        for name in PATHS:
            r = run.results.get(name)
            if r is None:
                continue
            d = r.to_dict(base)
            if r.error:
                lines.append(f"{run.profile:<10} {PATH_LABELS[name]:<17} failed: {r.error}")
                continue
            lines.append(
                f"{run.profile:<10} {PATH_LABELS[name]:<17} {p.get('width')}x{p.get('height'):<4} "
                f"{p.get('steps'):>5} {r.batch:>5} {_fmt(d['s_per_image'], '.3f'):>8} "
                f"{_fmt(d['images_per_min'], '.1f'):>8} {_fmt(d['peak_vram_gib'], '.2f'):>8} "
                f"{_fmt(r.setup_s, '.1f'):>8} {_fmt(r.warmup_s, '.1f'):>8} "
                f"{_fmt(d['speedup'], '.2f', '') + ('x' if d['speedup'] else ''):>7}"
            )
        agent = run.results.get("agent")
        overhead = run.agent_overhead_ms()
        if agent is not None and overhead is not None:
            lines.append(f"{'':<10} agent overhead (HTTP e2e - engine, paired per request): median {overhead:.1f} ms, "
                         f"p90 {_fmt(agent.extra.get('overhead_p90_ms'), '.1f')} ms")
            st = agent.extra.get("stages_median_ms") or {}
            lines.append(f"{'':<10} agent stages (median ms): "
                         + ", ".join(f"{k} {st[k]:.1f}" for k in STAGE_ORDER if k in st))
        gap = run.engine_path_gap_ms()
        if gap is not None:
            lines.append(f"{'':<10} agent path median - engine path median (two processes, noisy): {gap:.1f} ms")
        if agent is not None and agent.extra.get("restart_s") is not None:
            lines.append(f"{'':<10} agent restart (spawn to ready + first job): {agent.extra['restart_s']:.1f} s")
        if agent is not None and agent.extra.get("recycle_s") is not None:
            how = "standby spare" if agent.extra.get("recycle_standby") else "cold spawn"
            lines.append(f"{'':<10} worker recycle (kill to ready + first image, {how}): "
                         f"{agent.extra['recycle_s']:.1f} s (ready {agent.extra['recycle_ready_s']:.1f} s)")
        if agent is not None and agent.extra.get("device_used_mib"):
            lines.append(f"{'':<10} agent GPU memory in use after the run (NVML): "
                         f"{agent.extra['device_used_mib'] / 1024:.2f} GiB")
        for row in run.sampler_sweep:
            lines.append(f"{'':<10} sampler {row['sampler']:<13} {_fmt(row.get('s_per_image'), '.3f')} s/image"
                         + (f"  ({row['error']})" if row.get("error") else ""))
        for row in run.batch_sweep:
            lines.append(f"{'':<10} batch {row['batch']:<3} {_fmt(row.get('s_per_image'), '.3f')} s/image "
                         f"{_fmt(row.get('images_per_min'), '.1f')} img/min"
                         + (f"  ({row['error']})" if row.get("error") else ""))
        if run.best_batch() is not None:
            lines.append(f"{'':<10} best batch: {run.best_batch()}")
        for key, value in run.checks.items():
            lines.append(f"{'':<10} check {key}: {value}")
    if meta.get("notice"):
        lines.append(f"note: {meta['notice']}")
    return "\n".join(lines)
