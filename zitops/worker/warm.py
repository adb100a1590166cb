"""``zitops warm``'s child process: set the engine up and run the warm-up, so the compile caches fill.

It runs in a spawned process like a worker (the CLI never imports torch):
the engine writes what it compiles under the deployment's ``cache_dir``
(inductor's FX graph, autograd and Triton caches, dynamo's automatic-dynamic
profile), which every later worker, spare and fresh agent on the host reads.
"""

from __future__ import annotations

import os
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

NOT_COMPILED = ("nothing to precompile: the engine compiles only with engine.compile on, on a CUDA device "
                "(or the CPU with engine.compile_on_cpu); the warm-up was skipped")


def warm_main(conn: Connection, config_data: dict[str, Any], import_path: str | None = None,
              export_path: str | None = None) -> None:
    """Entry point of the spawned process: one report dict (or an ``error`` one) down ``conn``, then exit.

    ``import_path`` is a bundle loaded before anything compiles (a mismatch
    is reported and the warm-up compiles); after the warm-up, what was
    compiled or loaded is saved as the key's bundle in the shared directory,
    and copied to ``export_path`` when given.
    """
    from zitops.worker.lifeline import die_with_parent

    die_with_parent()
    from zitops.config import config_from_mapping
    from zitops.gpu import worker_devices
    from zitops.worker.preimport import device_environment, engine_modules, preimport

    config = config_from_mapping(config_data, "warm config")
    # The first of the workers' GPUs (NVML is probed here, never in the CLI): the caches are per host.
    gpu = worker_devices(config.gpus)[0]
    device_environment(gpu)  # before torch: this process sees exactly one GPU, or none
    report: dict[str, Any] = {"pid": os.getpid(), "device": "cpu" if gpu is None else "cuda:0", "gpu": gpu}
    try:
        report["imports_s"] = round(preimport(engine_modules(config_data, gpu is not None)), 3)
        from zitops.engine.factory import create_engine
        from zitops.worker import warmup
        from zitops.worker.bundle import export_bundle, import_bundle

        report["compile_bundle"] = import_bundle(config, report["device"], import_path)
        engine = create_engine(config)
        started = time.perf_counter()
        engine.setup(report["device"])
        report["engine_setup_s"] = round(time.perf_counter() - started, 3)
        report["compiled"] = bool(getattr(engine, "effective", {}).get("compile"))
        if report["compiled"]:
            # Whatever engine.warmup says: filling the caches is this command's whole point.
            plan = warmup.warmup_plan(config.profile, config.limits.min_side, config.limits.max_side)
            report.update(warmup.run_warmup(engine, config.profile, plan))
            from zitops.engine.precision.compile_bundle import compile_counters

            report["counters"] = compile_counters()
            report["exported"] = export_bundle(config, report["device"], export_path)
        else:
            report["warmup"] = NOT_COMPILED
    except BaseException as exc:  # the parent reports it as one line
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    conn.send(report)
    conn.close()
