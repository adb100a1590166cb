"""A worker's side of the fleet compile bundle: its key, and loading the bundle before the engine compiles.

The key's parts come from the config (engine knobs, the warm-up's shapes, the
model) and from this process (versions, the GPU's compute capability), so
only a worker or ``zitops warm``'s child, after torch is imported, builds it.
The shared directory is ``paths.compile_bundle_dir`` (a volume every agent of
a fleet mounts), else ``<cache_dir>/bundles``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zitops.config import AgentConfig
from zitops.engine.precision import compile_bundle as cb

log = logging.getLogger("zitops.engine")


def bundle_dir(config: AgentConfig) -> Path:
    """The deployment's shared compile bundle directory."""
    if config.paths.compile_bundle_dir:
        return Path(config.paths.compile_bundle_dir)
    return Path(config.paths.cache_dir) / "bundles"


def compiles(config: AgentConfig, device: str) -> bool:
    """Whether the engine will compile on ``device`` (a GPU, or the CPU with ``engine.compile_on_cpu``)."""
    s = config.profile.engine
    return config.engine.kind == "diffusers" and s.compile and (device != "cpu" or s.compile_on_cpu)


def device_tag(device: str) -> str:
    """``cpu``, or the GPU's name for the key: ``cuda sm_90`` (compiled kernels are per architecture)."""
    if device == "cpu":
        return "cpu"
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"cuda sm_{major}{minor}"


def parts(config: AgentConfig, device: str) -> dict[str, Any]:
    """This worker's key parts."""
    from zitops.worker.warmup import warmup_plan

    plan = warmup_plan(config.profile, config.limits.min_side, config.limits.max_side)
    return cb.key_parts(engine=config.profile.engine.model_dump(mode="json"),
                        shapes=[(r.batch, r.width, r.height) for r in plan], model=config.model,
                        device=device_tag(device))


def import_bundle(config: AgentConfig, device: str, source: str | Path | None = None) -> dict[str, Any] | None:
    """Load the bundle for this key (from ``source``, else the shared directory) before anything compiles.

    None when the engine does not compile here; otherwise the start-up
    report's ``compile_bundle`` part: ``loaded``, or ``compile`` with why.
    A bundle for another key is never loaded; the reason is logged.
    """
    if not compiles(config, device):
        return None
    from zitops.engine.precision.compile_cache import configure_compile_cache, share_shape_profile

    configure_compile_cache(config.paths.cache_dir)  # the bundle fills the caches the engine will read
    key = parts(config, device)
    share_shape_profile(cb.digest(key))  # the bundle's shape profile is read under this key's job id
    lookup = cb.check(source, key) if source is not None else cb.find(bundle_dir(config), key)
    report = {"key": cb.digest(key), **cb.load(lookup)}
    if report["status"] == "loaded":
        log.info("%s: loaded %s", report["message"], report.get("entries"))
    else:
        log.warning("%s", report["message"])
    return report


def export_bundle(config: AgentConfig, device: str, dest: str | Path | None = None) -> dict[str, Any] | None:
    """Save what this process compiled as the key's bundle in the shared directory (and at ``dest``)."""
    key = parts(config, device)
    shared = cb.bundle_path(bundle_dir(config), key)
    saved = cb.save(shared, key)
    if saved is None:
        return None
    if dest is not None:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        cb.write_bundle(dest, key, cb.read_bundle(shared)[1])
        saved["exported"] = str(dest)
    return {"key": cb.digest(key), **saved}
