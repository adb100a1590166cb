"""The benchmark results: one device script with named scenarios, their newest JSON, and the README table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from zitops.bench.table import DEFAULT_INDEX, readme_table

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "benchmarks" / "device.sh"


def readme_section_table() -> str:
    """The table under the README's "Measured speed" heading."""
    lines = (ROOT / "README.md").read_text("utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Measured speed"))
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def test_the_readme_table_is_the_generated_one() -> None:
    assert readme_section_table() == readme_table(DEFAULT_INDEX)


def test_the_index_lists_every_result_once_and_only_device_scenarios() -> None:
    index = json.loads(DEFAULT_INDEX.read_text("utf-8"))
    files = [s["file"] for s in index["scenarios"].values()]
    on_disk = sorted(p.name for p in DEFAULT_INDEX.parent.glob("*.json") if p != DEFAULT_INDEX)
    assert sorted(files) == on_disk  # no superseded run left, none missing
    listed = subprocess.run(["bash", str(DEVICE), "list"], capture_output=True, text=True, check=True).stdout
    scenarios = {line.split()[0] for line in listed.splitlines()}
    # A scenario that keeps more than one file lists each under a label naming its scenario.
    named = {s.get("scenario", name) for name, s in index["scenarios"].items()}
    assert named <= scenarios, named - scenarios
    used = {row[k] for row in index["readme_table"] for k in ("plain", "engine", "http") if k in row}
    assert used <= set(index["scenarios"])


def test_an_unknown_scenario_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(DEVICE), "designer", "no-such-scenario"], capture_output=True, text=True,
                          check=False, env={"PATH": "/usr/bin:/bin", "OUT": str(out)})
    assert proc.returncode == 2 and "unknown scenario: no-such-scenario" in proc.stderr
    assert "== designer" not in proc.stderr and not out.exists()
