"""Warm-up before Ready: the worker generates before it says it can serve.

On a GPU with ``engine.compile`` the first call at a new batch size or image
size compiles (measured on an H200: 31 s for the first 1024x1024 image, 45 s
for the second distinct size, when dynamo generalises to dynamic shapes).
Ready must mean fast, so that cost is paid here, before ``Ready`` is sent:

1. the profile's own batch at its own size, which dynamo specialises
   statically (the job most requests are);
2. one image at another size, which makes dynamo compile the dynamic-shape
   graph that every later size and batch reuses;
3. the profile's batch at its size again: dynamo now serves that size from
   the new dynamic graph (the newest cache entry is tried first), which had
   never run there, so without this run the first real request paid for it.
   Skipped when run 2 compiled no graph: with dynamo's shape profile (a
   fleet bundle, or this cache's earlier workers; :func:`~zitops.engine.
   precision.compile_cache.share_shape_profile`) run 1 already compiled the
   dynamic graph at the profile's size, and run 2 only reused it.

Then the engine's own after-warm-up step, when it has one
(``DiffusersEngine.after_warmup``): attention plans for the common caption
lengths at the profile's batch and size, the text encoder's CUDA graphs for
every prompt-length bucket, and cuDNN autotuning kept to the shapes warmed here.

Each run uses the profile's step count and a prompt of ordinary length: with
two steps and a one-word prompt the first real request still paid 0.7 s more
than steady (H200, 2026-11-29). :func:`warmup_plan` is a pure function of the
profile; running it is :func:`run_warmup`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from zitops.profile import Profile

# The seed article's example prompt: an ordinary length, so the text encoder's
# graph bucket is the one real prompts use.
WARMUP_PROMPT = "a ceramic coffee cup on a wooden table, natural lighting"


SKIPPED = "the second size compiled no graph: the profile's size already ran the one it uses"


@dataclass(frozen=True)
class WarmupRun:
    """One warm-up generation: a batch at a size; ``confirm``: only if the run before it compiled a graph."""

    batch: int
    width: int
    height: int
    confirm: bool = False


class Engine(Protocol):
    """What the warm-up needs of an engine."""

    def generate(self, request: Any, progress: Callable[[int, int], None] | None = None) -> Any:
        """Generate a request's images (``progress`` after each denoising step)."""


class Gate(Protocol):
    """A gated hot spare's gate (:class:`zitops.worker.gate.BuildGate`): wait before work while it is closed."""

    def wait(self) -> None:
        """Return once the spare may do its next piece of work."""

    def step(self, step: int, total: int) -> None:
        """The gate between two denoising steps."""


def wanted(setting: str | bool, *, on_cuda: bool, compiled: bool) -> bool:
    """Whether to warm up: ``auto`` warms a compiled engine on a GPU, where the first call compiles."""
    if isinstance(setting, bool):
        return setting
    return on_cuda and compiled


def _other_size(width: int, height: int, min_side: int, max_side: int) -> tuple[int, int]:
    """A second size that differs in both sides, within the limits (sides stay multiples of 16)."""
    wider = width + 128 if width + 128 <= max_side else width - 128
    taller = height - 64 if height - 64 >= min_side else height + 64
    return max(min_side, min(max_side, wider)), max(min_side, min(max_side, taller))


def warmup_plan(profile: Profile, min_side: int, max_side: int) -> tuple[WarmupRun, ...]:
    """The generations to run before Ready (see the module's docstring)."""
    g = profile.generation
    batch = g.batch  # the profile validates it against engine.max_batch
    w, h = _other_size(g.width, g.height, min_side, max_side)
    runs = [WarmupRun(batch, g.width, g.height), WarmupRun(1, w, h), WarmupRun(batch, g.width, g.height, confirm=True)]
    if batch > 1:
        # The dynamic graph now has a dynamic batch dim too; one more call at the
        # profile's size with batch 1 covers the remaining specialisation.
        runs.append(WarmupRun(1, g.width, g.height))
    return tuple(runs)


def run_warmup(engine: Engine, profile: Profile, plan: tuple[WarmupRun, ...],
               gate: Gate | None = None) -> dict[str, Any]:
    """Run ``plan``; returns the report for ``startup`` (seconds per run and in all).

    ``gate`` (a hot spare that builds only while its slot is idle) is waited at
    before each run, between its steps and before the after-warm-up step.
    """
    from zitops.engine.precision.compile_bundle import graphs_so_far
    from zitops.engine.request import request_from_profile

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    compiled: int | None = None  # graphs the previous run added; None where nothing compiles
    for run in plan:
        if run.confirm and compiled == 0:
            runs.append({"batch": run.batch, "width": run.width, "height": run.height, "skipped": SKIPPED})
            continue
        before = graphs_so_far()
        t0 = time.perf_counter()
        request = request_from_profile(profile, WARMUP_PROMPT, seed=0, batch=run.batch, width=run.width,
                                       height=run.height)
        if gate is None:
            engine.generate(request)
        else:
            gate.wait()
            engine.generate(request, gate.step)
        runs.append({"batch": run.batch, "width": run.width, "height": run.height,
                     "steps": request.steps, "seconds": round(time.perf_counter() - t0, 3)})
        now = graphs_so_far()
        compiled = None if now is None or before is None else now - before
    report: dict[str, Any] = {"warmup": runs}
    # Optional: the fault engine has nothing to prepare beyond generating.
    after = getattr(engine, "after_warmup", None)
    if after is not None:
        if gate is not None:
            gate.wait()
        # The profile's own batch and size: the attention plans most requests need (the plan's first run).
        report["after_warmup"] = after([(plan[0].batch, plan[0].width, plan[0].height)] if plan else [])
    report["warmup_s"] = round(time.perf_counter() - started, 3)
    return report


def settle_heap() -> dict[str, Any]:
    """Collect the set-up's garbage and freeze what is left, before Ready; the start-up report's part.

    Compiling leaves up to a million Python objects behind (dynamo's and
    inductor's: 725,754 frozen on an H100 with the fleet's bundle, 1,078,445
    after a cold compile: examples/benchmarks/h100-2026-12-07-b-*.json), many
    in cycles. Left alone, the collector's next full pass walks all of them at
    a moment set by allocation counts: inside some early job. Here that pass runs once, before Ready, and
    ``gc.freeze()`` moves every survivor (the engine, the compiled code) out
    of the collector's view, so later passes walk only what jobs allocate.
    Frozen objects are never collected; the set-up's are meant to live as
    long as the process (vLLM freezes its heap after start-up the same way).
    """
    started = time.perf_counter()
    collected = gc.collect()
    gc.freeze()
    return {"collected": collected, "frozen": gc.get_freeze_count(),
            "seconds": round(time.perf_counter() - started, 3)}
