"""Test support for the engine tests: one tiny model per test session.

Building the tiny pipeline costs seconds, so it is built once per process into
a temporary directory (removed at exit) and shared by every engine test file.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zitops.config import AgentConfig, config_from_mapping
from zitops.engine.request import GenerationRequest
from zitops.profile import EngineSettings, load_profile


@functools.lru_cache(maxsize=1)
def tiny_model_dir() -> Path:
    """A tiny Z-Image pipeline on disk, built on first use."""
    from zitops.engine.offline import force_offline
    from zitops.engine.tiny import make_tiny

    force_offline()
    root = Path(tempfile.mkdtemp(prefix="zitops-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return make_tiny(root / "tiny")


def settings(**over: Any) -> EngineSettings:
    """Engine settings for CPU tests: fp32 (fast and exact on CPU) unless overridden."""
    base: dict[str, Any] = {"precision": "fp32", "vae_precision": "fp32", "compile": False}
    base.update(over)
    return EngineSettings.model_validate(base)


def request(seeds: tuple[int, ...] = (1,), **over: Any) -> GenerationRequest:
    """A tiny request: 32x32, two steps, Euler."""
    fields: dict[str, Any] = {"prompt": "a red cat", "seeds": seeds, "width": 32, "height": 32,
                              "steps": 2, "sampler": "euler"}
    fields.update(over)
    return GenerationRequest(**fields)


def agent_config(tmp: Path, *, kind: str = "diffusers", faults: dict[str, Any] | None = None,
                 model: str = "tiny") -> AgentConfig:
    """A minimal agent config rooted at ``tmp``."""
    return config_from_mapping({
        "profile": load_profile("designer").model_dump(mode="json"),
        "model": model,
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": kind, "faults": faults or {}},
    })


def pixels(image: Any) -> Any:
    """An image as a signed int array, for differences."""
    import numpy as np

    return np.asarray(image.convert("RGB")).astype(np.int16)
