"""Find model weights on local disk, check them, and load them offline.

``resolve_model`` and ``check_model`` are torch-free (the CLI's ``model check``
uses them). ``load_pipeline`` imports diffusers, after forcing the Hugging Face
libraries offline so a run never contacts a hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zitops.engine.offline import force_offline, quiet_libraries
from zitops.errors import ModelError

TINY = "tiny"
FULL_RANDOM = "full-random"
"""``model: full-random``: the real-size architecture, random weights, built on the GPU."""

REQUIRED_COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin")
_INDEX_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json")
_HINT = ("download a diffusers-format Z-Image-Turbo snapshot (e.g. Tongyi-MAI/Z-Image-Turbo) and "
         "pass --model PATH (or `model:` in config.yaml), or use --model tiny for a demo")


def default_state_dir() -> Path:
    """Where ``--model tiny`` lives without an agent config: $ZITOPS_STATE_DIR or XDG state."""
    env = os.environ.get("ZITOPS_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "zitops"


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache (HF_HUB_CACHE, HF_HOME/hub, or ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


@dataclass(frozen=True)
class ModelCheck:
    """What ``check_model`` found: a verdict plus the missing pieces."""

    path: Path
    ok: bool
    tiny: bool = False
    components: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    size_bytes: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        if not self.ok:
            return f"{self.path}: incomplete, missing {', '.join(self.missing)}"
        kind = " (tiny random model: images are noise)" if self.tiny else ""
        return f"{self.path}: complete, {self.size_bytes / 2**20:.1f} MiB{kind}"


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot load (empty, truncated, a bad header); None when its header adds up.

    Reads the header only (8 bytes of length, then JSON): a download cut short
    is found here, not minutes later when the worker loads it.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "empty" if size == 0 else f"truncated ({size} bytes)"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"truncated ({size} bytes, its header alone says {length + 8})"
            header = json.loads(f.read(length))
    except (OSError, ValueError) as exc:
        return f"unreadable header ({type(exc).__name__})"
    if not isinstance(header, dict):
        return "unreadable header (not a JSON object)"
    ends = [t["data_offsets"][1] for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and isinstance(t.get("data_offsets"), list)
            and len(t["data_offsets"]) == 2 and isinstance(t["data_offsets"][1], int)]
    needed = 8 + length + max(ends, default=0)
    return f"truncated ({size} of {needed} bytes)" if needed > size else None


def _file_problems(comp_dir: Path, names: list[str]) -> list[str]:
    """``comp/name (why)`` for each present safetensors file that would not load."""
    out = []
    for name in names:
        path = comp_dir / name
        why = safetensors_problem(path) if name.endswith(".safetensors") and path.is_file() else None
        if why:
            out.append(f"{comp_dir.name}/{name} ({why})")
    return out


def _component_weights(comp_dir: Path) -> tuple[list[str], int]:
    """(missing or broken files, bytes present) for one model component directory."""
    if not (comp_dir / "config.json").is_file():
        return [f"{comp_dir.name}/config.json"], 0
    for name in _INDEX_NAMES:
        index = comp_dir / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError):
                return [f"{comp_dir.name}/{name} (unreadable)"], 0
            missing = [f"{comp_dir.name}/{s}" for s in shards if not (comp_dir / s).is_file()]
            size = sum((comp_dir / s).stat().st_size for s in shards if (comp_dir / s).is_file())
            return missing + _file_problems(comp_dir, shards), size
    for name in _WEIGHT_NAMES:
        if (comp_dir / name).is_file():
            return _file_problems(comp_dir, [name]), (comp_dir / name).stat().st_size
    return [f"{comp_dir.name}/{_WEIGHT_NAMES[0]} (or a sharded index)"], 0


def check_model(path: str | Path) -> ModelCheck:
    """Check that ``path`` holds a complete diffusers-format ZImagePipeline, file by file."""
    root = Path(path)
    index_file = root / "model_index.json"
    if not index_file.is_file():
        return ModelCheck(root, False, missing=("model_index.json",))
    try:
        index = json.loads(index_file.read_text("utf-8"))
    except (OSError, ValueError):
        return ModelCheck(root, False, missing=("model_index.json (not valid JSON)",))
    components = {k: str(v[1]) for k, v in index.items()
                  if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
    missing: list[str] = []
    size = 0
    for comp in REQUIRED_COMPONENTS:
        cdir = root / comp
        if comp not in components:
            missing.append(f"{comp} (not in model_index.json)")
        elif not cdir.is_dir():
            missing.append(f"{comp}/")
        elif comp == "scheduler":
            if not (cdir / "scheduler_config.json").is_file():
                missing.append("scheduler/scheduler_config.json")
        elif comp == "tokenizer":
            if not ((cdir / "tokenizer.json").is_file()
                    or ((cdir / "vocab.json").is_file() and (cdir / "merges.txt").is_file())):
                missing.append("tokenizer/tokenizer.json (or vocab.json + merges.txt)")
        else:
            miss, got = _component_weights(cdir)
            missing.extend(miss)
            size += got
    from zitops.engine.tiny import is_tiny

    return ModelCheck(root, not missing, is_tiny(root), components, tuple(missing), size)


def find_in_hf_cache(repo_id: str) -> Path | None:
    """The snapshot directory of ``repo_id`` in the local hub cache, if any."""
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = snaps / ref.read_text("utf-8").strip()
        if snap.is_dir():
            return snap
    candidates = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tiny(state_dir: str | Path) -> Path:
    """``<state_dir>/models/tiny``, built once; a file lock keeps two workers from racing."""
    models = Path(state_dir) / "models"
    target = models / TINY
    if check_model(target).ok:
        return target
    with _file_lock(models / ".tiny.lock"):
        if check_model(target).ok:
            return target
        from zitops.engine.tiny import make_tiny

        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=models))
        try:
            make_tiny(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str, state_dir: str | Path | None = None) -> Path:
    """Turn ``tiny``, a local directory, or a repo id in the local HF cache into a checked path."""
    if model == TINY:
        return ensure_tiny(state_dir if state_dir is not None else default_state_dir())
    if model == FULL_RANDOM:
        raise ModelError("model 'full-random' has no weights on disk; it is built by the engine")
    path = Path(model).expanduser()
    if not path.exists() and "/" in model and not model.startswith((".", "/", "~")):
        cached = find_in_hf_cache(model)
        if cached is None:
            raise ModelError(f"model {model!r}: not a local directory and not in the local Hugging "
                             f"Face cache ({hf_cache_dir()}); zitops never downloads; {_HINT}")
        path = cached
    if not path.is_dir():
        raise ModelError(f"model {model!r}: no such directory; {_HINT}")
    result = check_model(path)
    if not result.ok:
        raise ModelError(f"model {path}: incomplete, missing {', '.join(result.missing)}; {_HINT}")
    return path


def load_pipeline(path: Path, dtype: Any, vae_dtype: Any = None, device: str | None = None) -> Any:
    """Load a checked pipeline directory offline; the VAE may get its own dtype.

    ``device`` (a CUDA device) loads each safetensors file straight onto it;
    None loads onto the CPU.
    """
    force_offline()
    import warnings

    from diffusers import ZImagePipeline

    quiet_libraries()
    from zitops.engine.phases import phase

    dtypes = {"default": dtype, "vae": vae_dtype if vae_dtype is not None else dtype}
    try:
        with warnings.catch_warnings(), phase("load"):
            # diffusers 0.42 renames torch_dtype to dtype; older releases know only torch_dtype.
            warnings.simplefilter("ignore", FutureWarning)
            extra: dict[str, Any] = {}
            if device is not None:
                import torch

                # diffusers takes a device type here, so name the device's index current first.
                torch.cuda.set_device(torch.device(device))
                extra["device_map"] = "cuda"
            pipe = ZImagePipeline.from_pretrained(str(path), torch_dtype=dtypes, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model {path}: cannot load: {str(exc).splitlines()[0]}; {_HINT}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


PRELOAD_HEADROOM = 1.5
"""A standby spare preloads a model only when MemAvailable is at least this many times its weights' bytes."""


@dataclass
class Preloaded:
    """A pipeline loaded onto the host by a standby spare, before it knew which start it would serve.

    Pageable host memory only: pinning it would initialise CUDA, which a
    spare must never do. :meth:`take` hands the pipeline over once, so no
    second reference keeps the host copy alive after the engine moves it.
    """

    pipe: Any
    model_path: Path
    precision: str
    vae_precision: str
    seconds: float
    used: bool = False

    def take(self) -> Any:
        """The pipeline, handed over once (None afterwards)."""
        pipe, self.pipe = self.pipe, None
        self.used = self.used or pipe is not None
        return pipe

    def drop(self) -> None:
        """Let the host copy go unused (it does not match the setup that got it)."""
        self.pipe = None


def mem_available_bytes() -> int | None:
    """The host's MemAvailable from /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def weights_bytes(model: str, state_dir: str | Path) -> int:
    """The bytes of ``model``'s weight files on disk; torch-free (the tiny model must already be built)."""
    path = Path(state_dir) / "models" / TINY if model == TINY else resolve_model(model, state_dir)
    result = check_model(path)
    if not result.ok:
        raise ModelError(f"model {path}: not complete on disk yet")
    return result.size_bytes


def preload_refusal(size_bytes: int, available: int | None, pending_bytes: int = 0,
                    headroom: float = PRELOAD_HEADROOM) -> str | None:
    """Why a spare must not load ``size_bytes`` of weights into host memory now; None when it may."""
    if available is None:
        return "MemAvailable is unreadable (/proc/meminfo)"
    free = available - pending_bytes
    if free < headroom * size_bytes:
        pending = f" less {pending_bytes / 2**30:.1f} GiB other spares are loading" if pending_bytes else ""
        return (f"MemAvailable {available / 2**30:.1f} GiB{pending} is under {headroom:g} x the model's "
                f"{size_bytes / 2**30:.1f} GiB of weights")
    return None
