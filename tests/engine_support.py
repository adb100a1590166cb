"""Test support for the engine tests: one tiny model per test session.

Building the tiny pipeline costs seconds, so it is built once per process into
a temporary directory (removed at exit) and shared by every engine test file.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
import time
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


def _no_tensors(size: int) -> bytes:
    """A ``size``-byte safetensors file holding no tensors: its 8-byte header length, ``{}``, padding."""
    return (2).to_bytes(8, "little") + b"{}" + b" " * (size - 10)


def fake_model(root: Path, *, sharded: bool = False) -> Path:
    """A complete-looking diffusers layout: weight files of a valid safetensors header and no tensors
    (check_model reads headers only), 10 bytes each, the transformer's 100."""
    root.mkdir(parents=True)
    index: dict[str, Any] = {"_class_name": "ZImagePipeline"}
    for comp, cls in (("scheduler", "FlowMatchEulerDiscreteScheduler"), ("text_encoder", "Qwen3Model"),
                      ("tokenizer", "Qwen2Tokenizer"), ("transformer", "ZImageTransformer2DModel"),
                      ("vae", "AutoencoderKL")):
        index[comp] = ["diffusers", cls]
        (root / comp).mkdir()
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    for comp in ("text_encoder", "vae"):
        (root / comp / "config.json").write_text("{}")
        (root / comp / "model.safetensors").write_bytes(_no_tensors(10))
    tr = root / "transformer"
    (tr / "config.json").write_text("{}")
    if sharded:
        shards = {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                  "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}
        (tr / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
        for name in shards.values():
            (tr / name).write_bytes(_no_tensors(100))
    else:
        (tr / "diffusion_pytorch_model.safetensors").write_bytes(_no_tensors(100))
    return root


def flock_waiters(path: Path) -> list[int]:
    """Pids blocked in flock() on ``path``, from /proc/locks (their lines are marked "->")."""
    suffix = f":{os.stat(path).st_ino}"
    pids = []
    with open("/proc/locks", encoding="ascii") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 6 and fields[1] == "->" and fields[2] == "FLOCK" and fields[6].endswith(suffix):
                pids.append(int(fields[5]))
    return pids


def ensure_tiny_racing(state_dir: str, barrier: Any, log: str) -> None:
    """One of two processes that call ``ensure_tiny`` at once (a spawned child of the lock test).

    ``make_tiny`` is replaced by a fake that records the build in ``log`` and then holds the
    build lock until the other process is seen blocked on it in /proc/locks: the race is forced
    by that event, not by a sleep. Without the lock the fake would never see a waiter and fail.
    """
    from zitops.engine import loader, tiny

    lock = Path(state_dir) / "models" / ".tiny.lock"

    def fake_make_tiny(directory: str | Path, seed: int = 0) -> Path:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"build {os.getpid()}\n")
        deadline = time.monotonic() + 60
        while not [pid for pid in flock_waiters(lock) if pid != os.getpid()]:
            if time.monotonic() > deadline:
                raise AssertionError("the other process never waited on the build lock")
            time.sleep(0.01)
        path = Path(directory)
        path.rmdir()
        fake_model(path)
        (path / tiny.TINY_MARKER).write_text("tiny")
        return path

    tiny.make_tiny = fake_make_tiny  # type: ignore[assignment]
    barrier.wait(60)
    result = loader.ensure_tiny(state_dir)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"result {os.getpid()} {result}\n")


def png_text(image: Any) -> dict[str, str]:
    """The text chunks of a PNG opened with PIL (a PngImageFile's ``text``; anything else fails here)."""
    from PIL import PngImagePlugin

    assert isinstance(image, PngImagePlugin.PngImageFile), f"not a PNG: {type(image).__name__}"
    return dict(image.text)
