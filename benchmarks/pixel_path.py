"""What a finished image's pixels cost the host between the engine and the response, piece by piece.

    python benchmarks/pixel_path.py [--side 1024] [--runs 60] [--out-dir DIR] [--json out.json]

Each figure is the median of ``--runs`` after 5 unrecorded, in ms, for one
RGB image of ``--side`` squared noise (CPU only, no GPU):

- ``pack_new_file``: the worker's Pillow raw write into a new /dev/shm file
  (tmpfs allocates and zeroes each page as it is written);
- ``pack_made_ahead``: the same into a file ``PixelFiles.prepare`` made
  between jobs (pages already allocated), and ``prepare`` itself, which runs
  after the Result is sent;
- ``unmap``: closing the agent's mapping of an unlinked pixel file (tmpfs
  frees its pages then), now done on the encode pool;
- ``png_write``: writing the encoded PNG to ``--out-dir`` (temp name, then
  ``os.replace``), the step a synchronous response that carries its images
  no longer takes. It depends on the disk and the kernel's writeback.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WARMUP = 5


def median_ms(step: Callable[[int], float | None], runs: int) -> float:
    """``step(i)`` timed whole, or by the seconds it returns itself; the median after WARMUP runs, in ms."""
    times = []
    for i in range(WARMUP + runs):
        started = time.perf_counter()
        own = step(i)
        elapsed = own if own is not None else time.perf_counter() - started
        if i >= WARMUP:
            times.append(elapsed)
    return round(statistics.median(times) * 1000.0, 3)


def main() -> None:
    """Time each piece; print (and optionally write) the medians in ms."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--out-dir", type=Path, default=None, help="where PNGs are written (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from zitops.engine.output import encode_image
    from zitops.worker.pixel_shm import PixelFiles, attach
    from zitops.worker.process import _pixel_writer

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8))
    nbytes = args.side * args.side * 3
    write = _pixel_writer(image)
    shm = Path(tempfile.mkdtemp(prefix="zitops-pixel-path-", dir="/dev/shm"))
    out_dir = Path(tempfile.mkdtemp(prefix="zitops-pixel-path-", dir=args.out_dir))
    png = encode_image(image, "png", {})
    try:
        def pack_new(_i: int) -> None:
            files = PixelFiles(shm)
            name = files.put_with(nbytes, write)
            assert name is not None
            (shm / name).unlink()

        made = PixelFiles(shm)
        made.put_with(nbytes, write)
        for path in shm.iterdir():
            path.unlink()
        prepare_s: list[float] = []

        def pack_ahead(_i: int) -> float:
            started = time.perf_counter()
            made.prepare()
            prepare_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            name = made.put_with(nbytes, write)
            elapsed = time.perf_counter() - started
            assert name is not None
            (shm / name).unlink()
            return elapsed

        def unmap(_i: int) -> float:
            name = PixelFiles(shm).put_with(nbytes, write)
            assert name is not None
            mapped: mmap.mmap = attach(name, nbytes, shm)
            bytes(mapped[:1])
            started = time.perf_counter()
            mapped.close()
            return time.perf_counter() - started

        def png_write(i: int) -> None:
            path = out_dir / f"{i}.png"
            tmp = out_dir / f".{i}.png.tmp"
            tmp.write_bytes(png)
            os.replace(tmp, path)

        out = {"benchmark": "pixel_path", "side": args.side, "runs": args.runs, "machine": platform.node(),
               "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "png_bytes": len(png),
               "out_dir_parent": str(out_dir.parent),
               "ms": {"pack_new_file": median_ms(pack_new, args.runs),
                      "pack_made_ahead": median_ms(pack_ahead, args.runs),
                      "unmap": median_ms(unmap, args.runs),
                      "png_write": median_ms(png_write, args.runs)}}
        out["ms"]["prepare"] = round(statistics.median(prepare_s[WARMUP:]) * 1000.0, 3)
    finally:
        for directory in (shm, out_dir):
            for path in directory.iterdir():
                path.unlink()
            directory.rmdir()
    print(json.dumps(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
