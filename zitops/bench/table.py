"""The README's "Measured speed" table, generated from ``examples/benchmarks/index.json``.

    python -m zitops.bench.table [INDEX]

The index names the newest result file of each device scenario
(``benchmarks/device.sh``) and, per README row, which scenario gives the
plain-diffusers, engine and HTTP figures. Each figure is the path's
``s_per_image`` in that scenario's ``zitops bench`` JSON; the speedup is
plain over engine; the VRAM is the engine path's peak. A test checks that the
README's table is exactly this output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_INDEX = Path(__file__).resolve().parents[2] / "examples" / "benchmarks" / "index.json"
"""The index in a checkout (the examples are not in the wheel)."""

HEADER = ("| profile (size, steps) | plain diffusers | zitops engine | through the HTTP API (PNG) "
          "| speedup (engine) | engine peak VRAM |\n|---|---|---|---|---|---|")


def seconds(value: float) -> str:
    """Seconds per image as the README shows them: 3 decimals, 2 from 10 s up."""
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


def _path(results: dict[str, dict[str, Any]], scenario: str, path: str) -> dict[str, Any]:
    (run,) = results[scenario]["runs"]
    return dict(run["paths"][path])


def readme_table(index_path: Path = DEFAULT_INDEX) -> str:
    """The Markdown table, header included, with no trailing newline."""
    index = json.loads(index_path.read_text("utf-8"))
    results = {name: json.loads((index_path.parent / s["file"]).read_text("utf-8"))
               for name, s in index["scenarios"].items()}
    lines = [HEADER]
    for row in index["readme_table"]:
        plain = _path(results, row["plain"], "baseline")["s_per_image"]
        engine = _path(results, row["engine"], "engine")
        times = [engine["s_per_image"]]
        if row.get("engine_with_sweep"):
            # The batch sweep ran the profile's own batch again: show both runs.
            (run,) = results[row["engine"]]["runs"]
            times += [s["s_per_image"] for s in run["batch_sweep"] if s["batch"] == engine["batch"]]
        low, high = seconds(min(times)), seconds(max(times))
        http = _path(results, row["http"], "agent")["s_per_image"] if row.get("http") else None
        cells = [row["row"], f"{seconds(plain)} s/image", f"{low if low == high else low + '-' + high} s/image",
                 f"{seconds(http)} s/image" if http is not None else "",
                 f"{plain / engine['s_per_image']:.2f}x", f"{engine['peak_vram_gib']:.1f} GiB"]
        lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table for the index given (default: the checkout's)."""
    args = sys.argv[1:] if argv is None else argv
    print(readme_table(Path(args[0]) if args else DEFAULT_INDEX))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
