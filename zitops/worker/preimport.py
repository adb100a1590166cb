"""What a worker process sees and imports before its engine: its device, then the engine's modules.

Shared by a spawned worker (:func:`zitops.worker.process.worker_main`) and a
standby spare (:func:`zitops.worker.standby.standby_main`), which pays the
imports before it is assigned. Torch-free at import.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any

BASE_MODULES = ("zitops.config", "zitops.logbook.logs", "zitops.engine.factory", "zitops.engine.request")
FAULTY_MODULES = ("numpy", "PIL.Image", "zitops.engine.faulty")
# diffusers and transformers load lazily: naming a class imports its module.
DIFFUSERS_MODULES = (
    "torch", "diffusers", "transformers", "diffusers:ZImagePipeline", "diffusers:ZImageTransformer2DModel",
    "diffusers:AutoencoderKL", "transformers:Qwen3Model", "transformers:Qwen2Tokenizer",
    "zitops.engine.diffusers_engine", "zitops.engine.precision.accel", "zitops.engine.full",
)
# A leading "?" marks a module that may be absent (triton exists only on GPU hosts).
COMPILE_MODULES = ("torch._dynamo", "torch._inductor.compile_fx", "?triton")
UNUSED_MODULES = ("sklearn", "torchvision")
"""Never used by the engine, yet imported by transformers whenever installed: scikit-learn for assisted
generation's ROC curve (with pandas, pyarrow and scipy behind it), torchvision for image processors. On an
H100 host whose Python had both, they were 2.3 s and 0.6 s of a GPU worker's 23.8 s of imports
(``benchmarks/device.sh import-profile``, docs/gpu-lane/2026-12-07-h100-b.md). Hidden from the worker."""


def hide_unused(names: tuple[str, ...] = UNUSED_MODULES) -> None:
    """Make ``names`` look absent to this process (those it has not imported yet).

    A ``None`` in ``sys.modules`` makes ``importlib.util.find_spec`` answer None,
    which is how transformers and diffusers decide a package is not installed;
    an import of it raises ImportError, as if it were not.
    """
    for name in names:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def engine_modules(config_data: dict[str, Any], on_gpu: bool = True) -> list[str]:
    """What the configured engine will import on a GPU (``on_gpu``) or the CPU: ``module`` or ``module:attribute``.

    Only what the profile uses: inductor and triton (seconds of imports) only
    when the engine will compile, i.e. ``engine.compile`` on a GPU, or with
    ``engine.compile_on_cpu`` on the CPU (the engine skips compiling there otherwise).
    """
    engine = config_data.get("engine") or {}
    kind = engine.get("kind", "diffusers")
    inner = (engine.get("faults") or {}).get("inner")
    names = list(BASE_MODULES)
    if kind == "faulty":
        names += FAULTY_MODULES
    if kind != "faulty" or inner == "diffusers":
        names += DIFFUSERS_MODULES
        knobs = (config_data.get("profile") or {}).get("engine") or {}
        if knobs.get("compile") and (on_gpu or knobs.get("compile_on_cpu")):
            names += COMPILE_MODULES
    return names


def preimport(names: list[str]) -> float:
    """Import ``names`` (HF libraries forced offline first; ``?name`` only if installed); returns the seconds."""
    from zitops.engine.offline import force_offline

    started = time.perf_counter()
    hide_unused()  # before transformers decides what is installed
    force_offline()  # before any Hugging Face import, as the engine's setup does
    for name in names:
        module, _, attr = name.removeprefix("?").partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            if name.startswith("?"):
                continue
            raise
        if attr:
            getattr(mod, attr)
    return time.perf_counter() - started


def device_environment(gpu: int | None, visible: str | None = None) -> None:
    """Make this process see exactly one GPU, or none; call before anything imports torch.

    ``visible`` is the card's NVML UUID (``GPU-...``) when the agent knows it
    (:meth:`zitops.gpu.NvmlMonitor.uuids`): CUDA then opens exactly the device the
    watchdog reads through NVML at index ``gpu``. Without it, the index, with
    CUDA told to number cards in PCI bus order as NVML does. A context-parallel
    group's worker gets all its group's cards (``GPU-a,GPU-b`` or ``0,1``); its rank r uses ``cuda:r``.
    """
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else (visible or str(gpu))


def opened_device(gpu: int | None) -> dict[str, Any]:
    """Which card this process was given and, once CUDA is up, which it opened (for Ready's start-up report).

    ``uuid`` is the UUID CUDA reports for ``cuda:0`` (``GPU-`` and torch's
    8-4-4-4-12 form); None on the CPU, or where CUDA was never initialised.
    """
    report: dict[str, Any] = {"index": gpu, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "uuid": None}
    torch = sys.modules.get("torch")
    if gpu is None or torch is None:
        return report
    try:
        if torch.cuda.is_initialized():
            report["uuid"] = f"GPU-{torch.cuda.get_device_properties(0).uuid}"
    except Exception as exc:  # a torch without device UUIDs: the pool cannot check, and says so
        report["uuid_error"] = f"{type(exc).__name__}: {exc}"
    return report
