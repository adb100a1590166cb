"""Every measured figure in README.md and docs/*.md traces to a recorded file, or says what it is.

A figure is a number with a measurement unit (s/image, img/min, GiB, jobs/s,
ms). It passes when a number in ``examples/benchmarks/``, ``docs/gpu-lane/`` or ``benchmarks/results/``
rounds to it (MiB/1024 for GiB, s*1000 and µs/1000 for ms), or when its line says it is
``arithmetic``, a ``target`` or ``unrecorded``. ``UNSOURCED`` lists the figures
found without a source when this check was added (issue 27): the list may only
shrink, and a new unsourced figure fails the run.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s*(s/image|img/min|images/min|GiB|jobs/s|ms)\b")
MARKER = re.compile(r"arithmetic|target|unrecorded", re.IGNORECASE)
UNSOURCED: set[tuple[str, str]] = set()
"""Emptied 2026-12-07: the figures found without a source when this check was added were taken out
(docs/benchmarks.md says ``n/r``); a new unsourced figure fails the run."""


def _recorded() -> dict[int, set[str]]:
    """Every number in the recorded files, rounded to 0..3 decimals, also as GiB from MiB and ms from s."""
    out: dict[int, set[str]] = {d: set() for d in range(4)}
    for folder in ("examples/benchmarks", "docs/gpu-lane", "benchmarks/results"):
        for path in (ROOT / folder).rglob("*"):
            if not path.is_file():
                continue
            for m in re.finditer(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", path.read_text(errors="replace")):
                try:
                    v = float(m.group(0))
                except ValueError:
                    continue
                for w in (v, v / 1024, v * 1000, v / 1000, v / 2**30):
                    for d in out:
                        out[d].add(f"{w:.{d}f}")
    return out


def unsourced_figures() -> set[tuple[str, str]]:
    """(file, figure) for each measured figure with no recorded source and no marker on its line."""
    recorded = _recorded()
    found = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            if MARKER.search(line):
                continue
            for m in UNIT.finditer(line):
                number = m.group(1).replace(",", "")
                decimals = len(number.split(".")[1]) if "." in number else 0
                if decimals > 3 or number not in recorded[decimals]:
                    found.add((str(path.relative_to(ROOT)), m.group(0)))
    return found


def test_every_measured_figure_has_a_recorded_source_or_a_marker() -> None:
    found = unsourced_figures()
    new = sorted(found - UNSOURCED)
    assert not new, f"figures without a recorded source or an arithmetic/target/unrecorded marker: {new}"
    gone = sorted(UNSOURCED - found)
    assert not gone, f"sourced or removed since: take them off UNSOURCED: {gone}"
