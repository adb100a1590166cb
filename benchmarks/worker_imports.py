"""The worker's ``imports_s`` phase for a profile, in a fresh interpreter: what ``preimport`` of its list costs.

    python3 benchmarks/worker_imports.py --profile designer --list new    # the list a CPU worker imports now
    python3 benchmarks/worker_imports.py --profile designer --list old    # the list before issue 26 (as on a GPU)

``old`` is the list with inductor and triton whenever ``engine.compile`` is on
(what a GPU worker still imports: it compiles); ``new`` is what a CPU worker
imports now (no compiler unless ``engine.compile_on_cpu``). Run each list in
its own process, alternated, several times: imports are cold only once per
interpreter. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    """Time one preimport."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--list", choices=("old", "new"), default="new")
    ap.add_argument("--unused", action="store_true",
                    help="then import what the worker hides (UNUSED_MODULES) as transformers would, timed apart")
    args = ap.parse_args()

    from zitops.config import config_from_mapping, config_to_dict
    from zitops.profile import load_profile
    from zitops.worker.preimport import device_environment, engine_modules, preimport

    device_environment(None)
    profile = load_profile(args.profile, [])
    paths = {k: f"/nonexistent/{k}" for k in ("state_dir", "log_dir", "output_dir", "cache_dir")}
    data = config_to_dict(config_from_mapping({"profile": profile.model_dump(mode="json"), "paths": paths}, "bench"))
    names = engine_modules(data, on_gpu=args.list == "old")
    seconds = preimport(names)
    out = {"list": args.list, "imports_s": round(seconds, 2), "names": len(names), "modules": len(sys.modules)}
    if args.unused:
        out["unused_s"] = round(_unused(), 2)
    print(json.dumps(out))


def _unused() -> float:
    """Seconds to import what transformers imports when these are installed (scikit-learn's metrics for
    assisted generation, torchvision's io for image utilities), after the worker's imports; 0 where absent."""
    import contextlib
    import importlib
    import time

    from zitops.worker.preimport import UNUSED_MODULES

    for name in UNUSED_MODULES:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]  # undo the worker's hiding, for this measurement only
    started = time.perf_counter()
    for name in ("sklearn.metrics", "torchvision.io"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
