"""Compile once per fleet: torch's Mega-Cache bundle, keyed by everything that changes the graphs.

Why Mega-Cache (``torch.compiler.save_cache_artifacts`` /
``load_cache_artifacts``) and not AOTInductor: the engine compiles regions
(the repeated transformer block, the VAE decoder) through ``torch.compile``
with dynamo guards, a static graph at the profile's size and a dynamic one for
other sizes. Mega-Cache keeps exactly that path: it pre-fills inductor's FX
graph, AOTAutograd, autotuning and dynamic-shape (PGO) caches, so the same
``torch.compile`` calls hit instead of lowering and running Triton. AOTInductor
would export each region as a fixed ``.so`` with its own shape contract and
its own loader, a second code path beside the eager and compiled ones.

A bundle file is one header line (the key's parts as JSON) and torch's blob.
The key is torch/diffusers/triton/Python versions, the device (GPU compute
capability or ``cpu``), every engine knob, the warm-up's shapes and the model's
architecture: a bundle made for anything else is not loaded, and the worker
says which part differs and compiles. Torch-free at import; only the functions
that load or save call into torch (the worker's process).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from zitops.errors import ZitopsError

MAGIC = b"zitops-compile-bundle 1\n"
SUFFIX = ".zcc"
VERSIONED = ("torch", "diffusers", "triton")


class BundleError(ZitopsError):
    """A file that is not a zitops compile bundle, or cannot be read."""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _architecture(model: str) -> str:
    """The model's architecture: its transformer and VAE configs when ``model`` is a directory, else its name."""
    root = Path(model)
    texts = [(root / part / "config.json") for part in ("transformer", "vae")]
    if not all(p.is_file() for p in texts):
        return model
    digest = hashlib.sha256()
    for p in texts:
        try:
            conf = json.loads(p.read_text())
        except (OSError, ValueError):
            return model
        conf = {k: v for k, v in conf.items() if not k.startswith("_")}  # _name_or_path differs per host
        digest.update(json.dumps(conf, sort_keys=True).encode())
    return "config:" + digest.hexdigest()[:16]


def key_parts(*, engine: dict[str, Any], shapes: list[tuple[int, int, int]], model: str,
              device: str) -> dict[str, Any]:
    """Everything that changes the compiled graphs, as plain JSON values.

    ``engine`` is the profile's engine section (its ``warmup`` switch is left
    out: it changes when, not what, compiles); ``shapes`` the warm-up's
    (batch, width, height) runs; ``device`` ``"cpu"`` or ``"cuda sm_90"``.
    """
    knobs = {k: v for k, v in sorted(engine.items()) if k != "warmup"}
    return {
        **{name: _version(name) for name in VERSIONED},
        "python": ".".join(platform.python_version_tuple()[:2]),
        "device": device,
        "engine": knobs,
        "shapes": [list(s) for s in shapes],
        "model": _architecture(model),
    }


def digest(parts: dict[str, Any]) -> str:
    """A short stable hash of ``parts``: the bundle's file name under a shared directory."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def bundle_path(directory: str | Path, parts: dict[str, Any]) -> Path:
    """Where the bundle for ``parts`` lives in a shared bundle directory."""
    return Path(directory) / (digest(parts) + SUFFIX)


def write_bundle(path: str | Path, parts: dict[str, Any], blob: bytes) -> int:
    """Write header and blob atomically (a reader sees the whole file or the old one); the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = MAGIC + json.dumps(parts, sort_keys=True).encode() + b"\n" + blob
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(data)


def read_bundle(path: str | Path, *, header_only: bool = False) -> tuple[dict[str, Any], bytes]:
    """The key's parts and torch's blob; raises BundleError for a file that is not a bundle."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            magic = fh.readline()
            header = fh.readline()
            blob = b"" if header_only else fh.read()
    except OSError as exc:
        raise BundleError(f"compile bundle {path}: {exc.strerror or exc}") from None
    if magic != MAGIC:
        raise BundleError(f"{path} is not a zitops compile bundle (made by `zitops warm --export`)")
    try:
        parts = json.loads(header)
    except ValueError:
        raise BundleError(f"{path}: its header is damaged; export it again") from None
    if not isinstance(parts, dict):
        raise BundleError(f"{path}: its header is damaged; export it again")
    return parts, blob


def differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """The key parts that differ, each as ``name: bundle X, here Y`` (engine knobs one by one)."""
    out = []
    for name in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(name), ours.get(name)
        if a == b:
            continue
        if name == "engine" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"engine.{k}: bundle {a.get(k)!r}, here {b.get(k)!r}"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(f"{name}: bundle {a!r}, here {b!r}")
    return out


@dataclass(frozen=True)
class Lookup:
    """What a worker found for its key: a bundle to load, or why it compiles."""

    path: Path | None
    message: str


def find(directory: str | Path, parts: dict[str, Any]) -> Lookup:
    """The bundle for ``parts`` in ``directory``; otherwise why not (the nearest bundle's differences)."""
    directory = Path(directory)
    exact = bundle_path(directory, parts)
    if exact.is_file():
        return Lookup(exact, f"compile bundle {exact} matches")
    others = sorted(directory.glob("*" + SUFFIX)) if directory.is_dir() else []
    if not others:
        return Lookup(None, f"no compile bundle in {directory}: compiling (`zitops warm` writes one there)")
    best: list[str] | None = None
    for other in others:
        try:
            diff = differences(read_bundle(other, header_only=True)[0], parts)
        except BundleError:
            continue
        if best is None or len(diff) < len(best):
            best = diff
    why = "; ".join(best or ["unreadable"])
    return Lookup(None, f"no compile bundle in {directory} for this key ({len(others)} for others; nearest "
                        f"differs in {why}): compiling")


def check(path: str | Path, parts: dict[str, Any]) -> Lookup:
    """Whether the bundle file ``path`` was made for ``parts``; a mismatch names the differences."""
    try:
        theirs = read_bundle(path, header_only=True)[0]
    except BundleError as exc:
        return Lookup(None, f"{exc}: compiling")
    diff = differences(theirs, parts)
    if diff:
        return Lookup(None, f"compile bundle {path} was made for another key ({'; '.join(diff)}): compiling")
    return Lookup(Path(path), f"compile bundle {path} matches")


def load(lookup: Lookup) -> dict[str, Any]:
    """Load a matching bundle into torch's local caches (configure them first); the start-up report's part."""
    if lookup.path is None:
        return {"status": "compile", "message": lookup.message}
    from zitops.engine.precision.compile_cache import load_blob

    started = time.perf_counter()
    try:
        blob = read_bundle(lookup.path)[1]
    except BundleError as exc:
        return {"status": "compile", "message": f"{exc}: compiling"}
    entries = load_blob(blob, str(lookup.path))
    report = {"path": str(lookup.path), "bytes": len(blob), "load_s": round(time.perf_counter() - started, 3)}
    if entries is None:
        return {**report, "status": "compile", "message": f"torch did not load {lookup.path}: compiling"}
    return {**report, "status": "loaded", "entries": entries, "message": lookup.message}


def save(path: str | Path, parts: dict[str, Any]) -> dict[str, Any] | None:
    """What this process compiled or loaded, as a bundle for ``parts`` at ``path``; None when nothing was."""
    from zitops.engine.precision.compile_cache import save_blob

    saved = save_blob()
    if saved is None:
        return None
    blob, entries = saved
    return {"path": str(path), "bytes": write_bundle(path, parts, blob), "entries": entries}


def compile_counters() -> dict[str, int]:
    """Inductor's and AOTAutograd's cache hits and misses in this process (a miss is a real compile)."""
    from torch._dynamo.utils import counters

    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return {"fxgraph_miss": int(inductor.get("fxgraph_cache_miss", 0)),
            "fxgraph_hit": int(inductor.get("fxgraph_cache_hit", 0)),
            "autograd_miss": int(aot.get("autograd_cache_miss", 0)),
            "autograd_hit": int(aot.get("autograd_cache_hit", 0)),
            "graphs": int(counters["stats"].get("unique_graphs", 0))}


def graphs_so_far() -> int | None:
    """Dynamo's graphs so far in this process; None where nothing compiles (dynamo never imported)."""
    if "torch._dynamo" not in sys.modules:
        return None
    return compile_counters()["graphs"]
