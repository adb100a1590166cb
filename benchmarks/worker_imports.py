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
    print(json.dumps({"list": args.list, "imports_s": round(seconds, 2), "names": len(names),
                      "modules": len(sys.modules)}))


if __name__ == "__main__":
    main()
