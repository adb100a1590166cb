"""torch's compile caches: the per-directory inductor caches, and the portable "mega-cache".

:func:`configure_compile_cache` points inductor's persistent caches at the
engine's cache directory, so a restart on the same host reuses compiled code.

``torch.compiler.save_cache_artifacts()`` bundles what compiling produced
(inductor FX graphs, AOTAutograd entries, autotuning and dynamic-shape
profiles) into one blob; ``load_cache_artifacts`` puts it back into the
local caches before the next compile. The per-directory inductor caches the
engine configures already make a restart on the same host warm; this bundle
matters when the cache directory starts empty (a fresh host or container,
a wiped cache). Imports torch, so only the worker calls it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("zitops.engine")

ARTIFACTS_NAME = "compile-artifacts.bin"
"""The bundle's file name under the engine's cache directory."""


def configure_compile_cache(cache_dir: str | Path) -> Path:
    """Point inductor's persistent caches at ``<cache_dir>/inductor`` so restarts reuse compiled code."""
    path = Path(cache_dir) / "inductor"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except ImportError:  # pragma: no cover - very old torch
        pass
    return path


def share_shape_profile(job: str) -> None:
    """Turn on dynamo's shape profile (local PGO) for ``job``.

    Dynamo records which input dimensions turned dynamic (a second image size)
    and, on the next process with the same job id, compiles those dimensions
    dynamic at the first call instead of a static graph first and a dynamic one
    at the next size. torch keeps that profile only under a job id
    (``torch.compiler.config.job_id``; without one it is neither written nor
    read, nor carried in a Mega-Cache bundle). ``job`` is the compile bundle's
    key, so only processes that compile the same graphs share a profile. Call
    before the first compile and before a bundle is loaded.
    """
    import torch

    torch.compiler.config.job_id = f"zitops-{job}"


def artifacts_path(cache_dir: str | Path) -> Path:
    """Where the bundle lives for an engine cache directory."""
    return Path(cache_dir) / ARTIFACTS_NAME


def _info(info: Any) -> dict[str, int]:
    """Entries per cache kind, from torch's CacheInfo (its fields differ between releases)."""
    artifacts = getattr(info, "artifacts", None) or {}
    return {str(kind): len(keys) for kind, keys in artifacts.items() if keys}


def load_artifacts(path: str | Path) -> dict[str, int] | None:
    """Load a saved bundle into torch's local compile caches; None when there is none or it is unusable."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    return load_blob(blob, str(path))


def load_blob(blob: bytes, name: str) -> dict[str, int] | None:
    """Load torch's cache-artifact blob into the local caches; entries per kind, or None when torch refused it."""
    import torch

    try:
        info = torch.compiler.load_cache_artifacts(blob)
    except Exception as exc:  # a bundle from another torch: compile as if it were absent
        log.warning("compile cache bundle %s not loaded: %s: %s", name, type(exc).__name__, exc)
        return None
    if info is None:  # torch logs why (e.g. a checksum mismatch) and loads nothing
        log.warning("compile cache bundle %s not loaded: torch rejected it", name)
        return None
    return _info(info)


def save_blob() -> tuple[bytes, dict[str, int]] | None:
    """What this process compiled (or loaded from caches) as torch's blob and entries per kind; None if nothing."""
    import torch

    result = torch.compiler.save_cache_artifacts()
    if result is None:
        return None
    blob, info = result
    return blob, _info(info)


def save_artifacts(path: str | Path) -> dict[str, int] | None:
    """Save what this process compiled as a bundle (atomically); None when there was nothing to save."""
    saved = save_blob()
    if saved is None:
        return None
    blob, info = saved
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".artifacts-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)  # a reader sees the whole bundle or the old one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {**info, "bytes": len(blob)}
