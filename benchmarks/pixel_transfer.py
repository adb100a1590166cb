"""A worker's pixels to the agent: inline in the pickled Result over the pipe, against /dev/shm.

A spawned child plays the worker: it makes a ``--side`` x ``--side`` RGB
image's bytes, builds the Result with ``raw_image`` (via /dev/shm through a
``PixelFiles`` that makes the next file ahead between transfers, as the
worker does, or inline) and sends it; the parent plays the agent: it
receives it and attaches the pixels (``attach_pixels``), then touches every
byte (the encoder reads them all). Timed from the child's
``time.monotonic()`` before ``raw_image`` to the parent's after the last
byte is read: the ``pack`` and ``transfer`` stages of Server-Timing, alone. Prints min and median per mode over ``--runs``.

    python benchmarks/pixel_transfer.py [--side 1024] [--runs 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def worker(conn: Any, side: int, runs: int, via_shm: bool) -> None:
    """Send ``runs`` Results, each after the parent asks for one."""
    import numpy as np
    from PIL import Image

    from zitops.worker.pixel_shm import PixelFiles
    from zitops.worker.process import raw_image
    from zitops.worker.protocol import Result

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8))
    files = PixelFiles() if via_shm else None
    try:
        for n in range(runs):
            conn.recv()
            t0 = time.monotonic()
            raw = raw_image(img, {"seed": n}, files)
            conn.send((t0, Result(job_id=f"j{n}", images=(raw,), seconds=0.0)))
            if files is not None:
                files.prepare()  # as the worker does between jobs
    finally:
        if files is not None:
            files.close()


def measure(side: int, runs: int, via_shm: bool) -> list[float]:
    """Seconds per transfer, ``runs`` of them."""
    import numpy as np

    from zitops.agent.dispatch.images import attach_pixels

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=worker, args=(child, side, runs, via_shm), daemon=True)
    proc.start()
    out = []
    for _ in range(runs):
        parent.send(None)
        t0, result = parent.recv()
        (raw,) = attach_pixels(result.images)
        int(np.frombuffer(raw.data, dtype=np.uint8)[::4096].sum())  # the pages are really there
        out.append(time.monotonic() - t0)
    proc.join(10)
    return out


def main(argv: list[str] | None = None) -> int:
    """Both modes, interleaved twice; print and optionally write JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {"pipe": [], "shm": []}
    for _ in range(2):
        for mode in ("pipe", "shm"):
            times[mode] += measure(args.side, args.runs, mode == "shm")
    summary = {mode: {"min_ms": round(min(t) * 1000, 2), "median_ms": round(statistics.median(t) * 1000, 2),
                      "runs": len(t)} for mode, t in times.items()}
    for mode, s in summary.items():
        print(f"{mode:<5} {args.side}x{args.side} RGB: min {s['min_ms']} ms, median {s['median_ms']} ms "
              f"({s['runs']} transfers)")
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "pixel_transfer", "side": args.side, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
