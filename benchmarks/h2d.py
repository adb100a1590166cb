"""Host-to-GPU copy speed on this host: pageable ``tensor.to(cuda)`` against zitops' pinned staging.

The set-up from host memory copies every weight once (fp8 quantizes layer by
layer from the host); this prints what each way of copying reaches, in GB/s,
for weight-sized tensors (3840 x 10240 bf16, 78.6 MB, as the transformer's
feed-forward), and what pinning a text encoder's worth of memory costs.

    python3 benchmarks/h2d.py [--gib 8] [--out h2d.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from zitops.engine.precision.transfer import Stager


def _timed(fn: Callable[[Any], Any], tensors: list[Any], device: Any) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    outs = [fn(t) for t in tensors]
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    del outs
    torch.cuda.empty_cache()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description="Host-to-GPU copy speed: pageable against pinned staging.")
    parser.add_argument("--gib", type=float, default=2.0, help="host tensors to copy, GiB")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    count = max(1, int(args.gib * 2**30 / (3840 * 10240 * 2)))
    tensors = [torch.ones(3840, 10240, dtype=torch.bfloat16) for _ in range(count)]
    total = sum(t.numel() * t.element_size() for t in tensors)
    torch.zeros(1, device=device)  # the CUDA context, outside the timings
    stager = Stager(args.device)
    _timed(stager.copy, tensors[:2], device)  # first-use costs outside the timings
    start = time.perf_counter()
    clones = [t.clone() for t in tensors]
    result: dict[str, Any] = {"bytes": total, "torch_threads": torch.get_num_threads(),
                              "cpu_clone_gbps": total / (time.perf_counter() - start) / 1e9}
    del clones
    result["pageable_to_gbps"] = total / _timed(lambda t: t.to(device), tensors, device) / 1e9
    result["staged_gbps"] = total / _timed(stager.copy, tensors, device) / 1e9
    # Host tensors as the engine's random build leaves them: born on the GPU, moved to the host.
    born = [torch.ones(3840, 10240, dtype=torch.bfloat16, device=device) for _ in range(count)]
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    parked = [t.to("cpu") for t in born]
    result["d2h_pageable_gbps"] = total / (time.perf_counter() - start) / 1e9
    del born
    torch.cuda.empty_cache()
    result["parked_pageable_to_gbps"] = total / _timed(lambda t: t.to(device), parked, device) / 1e9
    result["parked_staged_gbps"] = total / _timed(stager.copy, parked, device) / 1e9
    from zitops.engine.precision.fp8 import _quantized

    result["parked_quantize_gbps"] = total / _timed(lambda t: _quantized(t, device, stager), parked, device) / 1e9
    start = time.perf_counter()
    pinned = [t.pin_memory() for t in tensors]
    result["pin_gbps"] = total / (time.perf_counter() - start) / 1e9
    result["pinned_to_gbps"] = total / _timed(lambda t: t.to(device, non_blocking=True), pinned, device) / 1e9
    result = {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
