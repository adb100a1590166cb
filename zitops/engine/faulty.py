"""A fault-injecting engine with the real engine's interface.

It leaks, crashes, hangs, runs out of memory or fails on command
(``zitops.config.FaultSettings``), so the worker, watchdog and drills are
tested through the same interface as the real engine. It must be selected
explicitly (``engine.kind: faulty``); it never stands in silently.

Memory is simulated by default: a baseline for the weights, a ballast that
grows by ``leak_mib_per_job`` after each job, and an allocator cache that
each job fills and ``release_cache`` empties, reported through ``memory()``
with ``simulated=True``. With ``leak_memory: real`` the ballast is real
tensors on the engine's device (:mod:`zitops.engine.leak`) and ``memory()``
reports the real allocator (the real leak drill).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import time
import zlib
from typing import Any

from zitops.config import FaultSettings
from zitops.engine.base import Engine, GenerationResult, MemoryStats, ProgressFn
from zitops.engine.oom import BatchOutOfMemory, generate_split_on_oom
from zitops.engine.request import GenerationRequest
from zitops.errors import EngineError, InvalidRequest

log = logging.getLogger("zitops.engine")
CRASH_EXIT_CODE = 3
CACHE_MIB_PER_IMAGE = 256.0
STEPS_PER_SECOND_CAP = 50


def synthetic_image(seed: int, width: int, height: int, pixels: str = "blobs") -> Any:
    """Seeded noise as a PIL image: the same seed and size give the same pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if pixels == "noise":  # every pixel random: PNG cannot compress it
        return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")
    # Low-resolution noise upscaled, so images look like blobs and compress.
    small = rng.integers(0, 256, size=(max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BILINEAR)


class FaultyEngine:
    """Implements :class:`zitops.engine.base.Engine`; faults per :class:`FaultSettings`."""

    name = "faulty"

    def __init__(self, faults: FaultSettings, *, explicit: bool = False, incarnation: int = 0,
                 inner: Engine | None = None) -> None:
        if not explicit:
            raise EngineError("the fault-injecting engine runs only when selected explicitly "
                              "(engine.kind: faulty)")
        self.faults = faults
        self.incarnation = incarnation
        self.inner = inner
        self.jobs = 0
        self.device = "cpu"
        self._leaked_mib = 0.0
        self._cache_mib = 0.0
        self._peak_mib = 0.0
        self._ballast: list[bytearray] = []
        self._real: Any = None  # a DeviceBallast once the device is known (leak_memory: real)

    @property
    def armed(self) -> bool:
        """Faults fire in the first incarnation only, unless ``every_incarnation``."""
        return self.incarnation == 0 or self.faults.every_incarnation

    def setup(self, device: str) -> None:
        """Set up the inner engine, if any (after the simulated load time or setup failure)."""
        self.device = device
        if self.faults.fail_setup_incarnation == self.incarnation:
            raise EngineError(f"simulated setup failure in incarnation {self.incarnation} "
                              "(faults.fail_setup_incarnation)")
        if self.faults.hang_in_setup == self.incarnation:
            log.error("fault: setup hangs in incarnation %d", self.incarnation)
            while True:  # a hung mount or driver call: heartbeats go on; only the startup deadline ends it
                time.sleep(3600)
        time.sleep(self.faults.setup_seconds)
        if self.inner is not None:
            self.inner.setup(device)
        if self.faults.leak_memory == "real":
            from zitops.engine.leak import DeviceBallast

            self._real = DeviceBallast(device)
        self._peak_mib = self.faults.baseline_mib

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """One job: maybe crash, hang or fail, then generate (splitting batches that "OOM")."""
        self.jobs += 1
        job = self.jobs
        f = self.faults
        if self.armed:
            if f.crash_on_job == job:
                log.error("fault: crashing on job %d (exit %d)", job, CRASH_EXIT_CODE)
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)
            if f.hang_on_job == job:
                log.error("fault: hanging on job %d%s", job, " holding the GIL" if f.hang_holds_gil else "")
                while True:  # a hang: the job never finishes; only a kill ends it
                    if f.hang_holds_gil:  # PyDLL keeps the GIL across the call: no other thread runs
                        ctypes.PyDLL(None).sleep(3600)
                    else:
                        time.sleep(3600)
            if f.raise_on_job == job:
                raise EngineError(f"injected failure on job {job} (fault engine)")
        result = generate_split_on_oom(self, request, progress)
        if self.armed and f.leak_mib_per_job > 0 and job >= f.leak_from_job:
            self._leak(f.leak_mib_per_job)
        result.info["job"] = job
        result.info["incarnation"] = self.incarnation
        return result

    def _leak(self, mib: float) -> None:
        if self._real is not None:
            self._real.grow(mib)
            return
        self._leaked_mib += mib
        # A token allocation keeps the ballast honest without eating the test
        # machine's RAM: the reported size is the simulated one.
        self._ballast.append(bytearray(1024))

    def run_batch(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """All images at once, or BatchOutOfMemory when the batch is above ``oom_above_batch``."""
        f = self.faults
        if request.width % 16 or request.height % 16:
            raise InvalidRequest(f"size: {request.width}x{request.height} is not a multiple of 16 "
                                 "(Z-Image-Turbo needs sides in steps of 16)")
        if self.armed and f.oom_above_batch is not None and request.batch > f.oom_above_batch:
            raise BatchOutOfMemory(f"injected: batch {request.batch} > {f.oom_above_batch}")
        start = time.perf_counter()
        if self.inner is not None:
            inner_result = self.inner.generate(request, progress)
            images = inner_result.images
            info = dict(inner_result.info)
            # A floor on the job's length, so a drill's periodic watchdog round sees each job's effect.
            time.sleep(max(0.0, start + f.job_seconds - time.perf_counter()))
        else:
            self._pace(request, progress)
            images = [synthetic_image(s ^ zlib.crc32(request.prompt.encode()), request.width,
                                      request.height, f.pixels) for s in request.seeds]
            info = {"model": "synthetic (fault engine)", "prompt": request.prompt,
                    "negative_prompt": request.negative_prompt, "guidance": request.guidance,
                    "sampler": request.sampler,
                    "schedule": request.schedule, "steps": request.steps,
                    "size": f"{request.width}x{request.height}", "profile": request.profile,
                    "device": self.device}
        self._cache_mib = max(self._cache_mib, CACHE_MIB_PER_IMAGE * request.batch)
        self._peak_mib = max(self._peak_mib, self._allocated() + CACHE_MIB_PER_IMAGE * request.batch)
        info["engine"] = self.name
        return GenerationResult(images, request.seeds, time.perf_counter() - start, info)

    def _pace(self, request: GenerationRequest, progress: ProgressFn | None) -> None:
        total = max(1, min(request.steps, STEPS_PER_SECOND_CAP))
        per_step = self.faults.job_seconds * request.batch / total
        for i in range(total):
            if per_step > 0:
                time.sleep(per_step)
            if progress is not None:
                progress(i + 1, total)

    def _allocated(self) -> float:
        return self.faults.baseline_mib + self._leaked_mib

    def memory(self) -> MemoryStats:
        """Simulated allocator numbers: baseline + leaked, plus the cache in reserved (real ones for a real leak)."""
        if self._real is not None:
            return self._real.memory(self.inner.memory() if self.inner is not None else None)
        allocated = self._allocated()
        reserved = allocated + self._cache_mib
        return MemoryStats(
            allocated_mib=allocated, reserved_mib=reserved,
            peak_allocated_mib=max(self._peak_mib, allocated),
            device_total_mib=self.faults.simulated_total_mib,
            device_used_mib=min(self.faults.simulated_total_mib, reserved + 300.0),
            simulated=True,
        )

    def release_cache(self) -> None:
        """Empty the simulated cache (a leak stays leaked: only a restart frees it)."""
        gc.collect()
        self._cache_mib = 0.0
        if self.inner is not None:
            self.inner.release_cache()

    def describe(self) -> dict[str, Any]:
        """The fault plan, the job count and the inner engine."""
        return {
            "engine": self.name, "model": "synthetic (fault engine)" if self.inner is None
            else self.inner.describe().get("model"),
            "faults": self.faults.model_dump(), "armed": self.armed, "jobs": self.jobs,
            "incarnation": self.incarnation, "device": self.device,
            "inner": self.inner.describe() if self.inner is not None else "synthetic",
        }
