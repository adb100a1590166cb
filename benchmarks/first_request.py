"""Ready means fast? Time a fresh agent's first requests after /readyz first says 200.

    python3 benchmarks/first_request.py --arch full --profile designer --cache-dir DIR --out first.json \
        [--set engine.warmup=false]

Starts ``zitops agent`` (127.0.0.1, free port), waits for ``/readyz``, then
sends over the OpenAI route, one at a time: the profile's size three times
(first, then steady), and each of ``--sizes`` twice (first at that size, then
steady). Records each request's wall time and the worker's start-up report
(``warmup_s`` and its runs). Random weights: speed only, never quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    """Run the probe."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--sizes", default="768x1344,1344x768,1152x896")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    import httpx

    from zitops.bench.agent_http import free_port, running_agent, write_config
    from zitops.engine.loader import FULL_RANDOM
    from zitops.profile import load_profile

    profile = load_profile(args.profile, args.set)
    model = FULL_RANDOM if args.arch == "full" else args.model
    own = f"{profile.generation.width}x{profile.generation.height}"
    plan = [own, own, own] + [s for s in args.sizes.split(",") if s for _ in range(2)]
    result: dict[str, Any] = {"profile": args.profile, "sets": args.set, "model": model,
                              "date": time.strftime("%Y-%m-%d"), "requests": []}
    with tempfile.TemporaryDirectory(prefix="zitops-first-") as tmp:
        work = Path(tmp)
        port = free_port()
        config = write_config(profile, model, work, port, cache_dir=Path(args.cache_dir), state_dir=work / "state")
        with running_agent(config, port, ready_timeout_s=900) as (url, ready_s), \
                httpx.Client(timeout=900) as client:
            result["ready_s"] = round(ready_s, 2)
            result["startup"] = (client.get(f"{url}/status").json().get("workers") or [{}])[0].get("startup")
            seen: set[str] = set()
            for size in plan:
                body = {"prompt": "a red fox in fresh snow", "size": size, "response_format": "b64_json",
                        "seed": 7}
                t0 = time.perf_counter()
                client.post(f"{url}/v1/images/generations", json=body).raise_for_status()
                result["requests"].append({"size": size, "first_at_size": size not in seen,
                                           "seconds": round(time.perf_counter() - t0, 3)})
                seen.add(size)
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1), "utf-8")


if __name__ == "__main__":
    main()
