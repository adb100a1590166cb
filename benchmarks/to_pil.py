"""What the engine's pixels cost Pillow on the host: a permuted (strided) uint8 array against a contiguous one.

    python benchmarks/to_pil.py [--side 1024] [--runs 40] [--json out.json]

``zitops/engine/decoding.py`` makes the pixels contiguous on the device before
``.cpu()``; this times ``Image.fromarray`` on both layouts of the same pixels
(CPU only, no GPU needed). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    """Time both layouts; print (and optionally write) the medians in ms."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    pixels = torch.randint(0, 256, (1, 3, args.side, args.side), dtype=torch.uint8)
    strided = pixels.permute(0, 2, 3, 1).numpy()[0]  # what .cpu() of a permuted tensor hands over
    contiguous = np.ascontiguousarray(strided)

    def median_ms(array: np.ndarray) -> float:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            Image.fromarray(array)
            times.append(time.perf_counter() - started)
        return round(statistics.median(times) * 1000.0, 3)

    out = {"benchmark": "to_pil", "side": args.side, "runs": args.runs, "machine": platform.node(),
           "date": time.strftime("%Y-%m-%d"),
           "fromarray_ms": {"strided": median_ms(strided), "contiguous": median_ms(contiguous)}}
    print(json.dumps(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
