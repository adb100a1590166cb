"""``zitops warm``: precompile into a deployment's compile cache before its first start.

A fresh agent's worker otherwise compiles inside its warm-up (91 s to Ready
on an H200 with cold caches, docs/benchmarks.md). This spawns the engine in a
child process (:mod:`zitops.worker.warm`), exactly as a worker would set up
and warm up with the deployment's config, on the first of its GPUs, so the caches
under ``paths.cache_dir`` hold the compiled code before the agent starts.
torch-free here: only the child imports it.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

from zitops.config import AgentConfig, config_to_dict
from zitops.errors import EngineError

MIB = 2**20


def cache_size(path: Path) -> dict[str, Any]:
    """Files and MiB under ``path`` (0 when it does not exist)."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return {"files": len(files), "mib": round(sum(p.stat().st_size for p in files) / MIB, 1)}


def warm(config: AgentConfig, timeout_s: float = 1800.0, *, import_path: str | Path | None = None,
         export_path: str | Path | None = None) -> dict[str, Any]:
    """Set up and warm the deployment's engine once in a child process; the child's report plus cache sizes.

    ``import_path``: a compile bundle (``--export`` of another host) loaded
    before the warm-up, which then compiles nothing when its key matches.
    ``export_path``: where to copy the bundle this run leaves in the
    deployment's shared bundle directory. Raises EngineError when the child
    fails, dies or overruns ``timeout_s``; a bundle for another key is not.
    """
    if import_path is not None and not Path(import_path).is_file():
        raise EngineError(f"warm --import {import_path}: no such file (a bundle from `zitops warm --export FILE`)")
    from zitops.agent.workers.spawn import sigkill, start_child
    from zitops.worker.warm import warm_main

    cache = Path(config.paths.cache_dir)
    before = cache_size(cache)
    started = time.monotonic()
    proc, conn = start_child(multiprocessing.get_context("spawn"), warm_main, "zitops-warm",
                             (config_to_dict(config), None if import_path is None else str(Path(import_path).absolute()),
                              None if export_path is None else str(Path(export_path).absolute())))
    try:
        if not conn.poll(timeout_s):
            raise EngineError(f"warm: the engine did not finish set-up and warm-up within {timeout_s:g} s "
                              "(raise --timeout)")
        try:
            report: dict[str, Any] = conn.recv()
        except EOFError:
            proc.join(5)
            raise EngineError(f"warm: the engine process died before it reported (exit {proc.exitcode})") from None
    finally:
        conn.close()
        proc.join(10)
        if proc.is_alive():
            sigkill(proc)
            proc.join(5)
    if "error" in report:
        raise EngineError(f"warm: engine set-up or warm-up failed: {report['error']}")
    report.pop("traceback", None)
    report["seconds"] = round(time.monotonic() - started, 3)
    report["cache_dir"] = str(cache)
    report["cache_before"], report["cache_after"] = before, cache_size(cache)
    return report
