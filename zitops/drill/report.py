"""A drill's outcome: the jobs it ran, its checks and figures, and the text report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Jobs:
    """Accepted jobs and their final states."""

    accepted: list[str] = field(default_factory=list)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    batch: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> list[str]:
        """Accepted jobs not final yet."""
        return [j for j in self.accepted if j not in self.final]

    def merged(self, earlier: Jobs) -> Jobs:
        """These jobs after ``earlier``'s (a drill that submits in two rounds)."""
        return Jobs(earlier.accepted + self.accepted, {**earlier.final, **self.final},
                    earlier.refused + self.refused, {**earlier.batch, **self.batch})


@dataclass(frozen=True)
class Check:
    """One expectation and whether it held."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class DrillReport:
    """What happened in a drill: figures, checks, jobs, events; ``ok`` when every check held."""

    kind: str
    directory: str
    kept: bool
    url: str = ""
    agent_pid: int | None = None
    agent_exit: int | None = None
    worker_pids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    readyz: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the drill ran and every expectation held."""
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record an expectation."""
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "kind": self.kind, "ok": self.ok, "error": self.error, "seconds": round(self.seconds, 2),
            "directory": self.directory, "kept": self.kept, "url": self.url, "agent_pid": self.agent_pid,
            "agent_exit": self.agent_exit, "worker_pids": self.worker_pids, "figures": self.figures,
            "jobs": self.jobs, "checks": [c.__dict__ for c in self.checks], "events": self.events,
            "readyz": self.readyz, "metrics": self.metrics,
        }


def format_report(report: DrillReport) -> list[str]:
    """The human-readable report, one line per item."""
    r = report
    lines = [f"drill {r.kind}: {'PASS' if r.ok else 'FAIL'} in {r.seconds:.1f} s"]
    where = "kept" if r.kept else "removed"
    lines.append(f"  deployment  {r.directory} ({where})")
    if r.url:
        lines.append(f"  agent       pid {r.agent_pid} at {r.url}, exit {r.agent_exit}; "
                     f"worker pids {', '.join(map(str, r.worker_pids)) or '-'}")
    if r.error:
        lines.append(f"  error       {r.error}")
    if r.jobs:
        j = r.jobs
        lines.append(f"  jobs        {j['accepted']} accepted, {j['succeeded']} succeeded, {len(j['failed'])} failed, "
                     f"{len(j['retried'])} retried, {j['lost']} lost")
        for job_id, err in j["failed"].items():
            lines.append(f"    failed {job_id}: {err}")
    for key, value in r.figures.items():
        lines.append(f"  {key:<30} {value}")
    if r.events:
        lines.append("  events (from /status):")
        t0 = r.events[0]["time"]
        for e in r.events:
            extra = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("time", "kind", "worker", "incarnation",
                                                                            "reason"))
            lines.append(f"    +{e['time'] - t0:6.2f}s {e['kind']:<9} {e.get('worker') or '-'}#{e.get('incarnation')} "
                         f"{e['reason']}{' (' + extra + ')' if extra else ''}")
    downs = [c for c in r.readyz if not c["ready"]]
    if downs:
        lines.append("  /readyz 503 spells (reasons):")
        for down in downs:
            lines.append(f"    {'; '.join(down['reasons']) or '-'}")
    if r.checks:
        lines.append("  checks:")
        for c in r.checks:
            lines.append(f"    {'ok  ' if c.ok else 'FAIL'} {c.name}{': ' + c.detail if c.detail and not c.ok else ''}")
    return lines
