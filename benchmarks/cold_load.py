"""Cold load of real-size weights from local disk, in GB/s, and a worker's restart phases.

    python3 benchmarks/cold_load.py save DIR     # write the full-size random pipeline (about 20 GB)
    python3 benchmarks/cold_load.py load DIR     # fresh process: load to the host, then .to(GPU), timed
    python3 benchmarks/cold_load.py load-direct DIR  # fresh process: straight to the GPU (the engine's way)

``load`` prints one JSON line: bytes on disk, seconds to import, to read the
weights into host memory (zitops.engine.loader.load_pipeline), and to move
them to the GPU, with the GB/s of each. Drop the page cache between ``save``
and ``load`` (as root: ``sync; echo 3 > /proc/sys/vm/drop_caches``) for a
cold read; ``load`` reports whether the files were still cached by timing alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def save(target: Path) -> None:
    """Build the full-size random pipeline on the GPU and save it in diffusers format."""
    import torch

    from zitops.engine.full import build_full_pipeline
    from zitops.engine.offline import force_offline

    force_offline()
    t0 = time.perf_counter()
    pipe = build_full_pipeline("cuda:0", torch.bfloat16, torch.bfloat16)
    built = time.perf_counter() - t0
    # A real snapshot names diffusers' own scheduler class, not zitops' subclass.
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    t0 = time.perf_counter()
    pipe.save_pretrained(str(target), safe_serialization=True)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(json.dumps({"stage": "save", "build_s": round(built, 2), "save_s": round(time.perf_counter() - t0, 2),
                      "bytes": size}), flush=True)


def load(target: Path) -> None:
    """Time imports, disk-to-host and host-to-GPU for the saved pipeline."""
    t0 = time.perf_counter()
    import torch

    from zitops.engine.loader import load_pipeline

    import_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in target.rglob("*.safetensors"))
    t0 = time.perf_counter()
    pipe = load_pipeline(target, torch.bfloat16, torch.bfloat16)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.to("cuda:0")
    torch.cuda.synchronize()
    h2d_s = time.perf_counter() - t0
    gb = size / 1e9
    print(json.dumps({"stage": "load", "weights_gb": round(gb, 2), "import_s": round(import_s, 2),
                      "disk_to_host_s": round(read_s, 2), "disk_to_host_gb_s": round(gb / read_s, 2),
                      "host_to_gpu_s": round(h2d_s, 2), "host_to_gpu_gb_s": round(gb / h2d_s, 2),
                      "total_s": round(import_s + read_s + h2d_s, 2)}), flush=True)


def load_direct(target: Path) -> None:
    """Time imports and the load straight onto the GPU (what the engine does without offload)."""
    t0 = time.perf_counter()
    import torch

    from zitops.engine.loader import load_pipeline

    import_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in target.rglob("*.safetensors"))
    t0 = time.perf_counter()
    pipe = load_pipeline(target, torch.bfloat16, torch.bfloat16, device="cuda:0")
    pipe.to("cuda:0")  # a no-op if everything landed on the GPU, as the engine calls it
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    on_gpu = all(p.device.type == "cuda" for m in (pipe.transformer, pipe.text_encoder, pipe.vae)
                 for p in m.parameters())
    gb = size / 1e9
    print(json.dumps({"stage": "load_direct", "weights_gb": round(gb, 2), "import_s": round(import_s, 2),
                      "disk_to_gpu_s": round(load_s, 2), "disk_to_gpu_gb_s": round(gb / load_s, 2),
                      "all_on_gpu": on_gpu, "total_s": round(import_s + load_s, 2)}), flush=True)


if __name__ == "__main__":
    {"save": save, "load": load, "load-direct": load_direct}[sys.argv[1]](Path(sys.argv[2]))
