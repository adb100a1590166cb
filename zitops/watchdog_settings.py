"""``watchdog``, the profile's thresholds for the VRAM watch and the leak, crash and hang policies.

Its own module so the profile's schema stays within its size; validated by
pydantic with ``extra="forbid"`` like every profile section. Torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WatchdogSettings(BaseModel):
    """Thresholds for the VRAM watch and the leak, crash and hang policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = Field(5.0, gt=0, le=3_600)
    heartbeat_interval_s: float = Field(2.0, gt=0, le=600)
    heartbeat_timeout_s: float = Field(30.0, gt=0, le=3_600)
    kill_grace_s: float = Field(5.0, ge=0, le=600)
    idle_cache_clear_mib: int = Field(1024, ge=0)
    leak_threshold_mib: int = Field(512, ge=1)
    leak_consecutive_jobs: int = Field(3, ge=1, le=1_000)
    high_water_pct: float = Field(95.0, gt=0, le=100)
    recycle_after_jobs: int = Field(0, ge=0)
    recycle_after_hours: float = Field(0.0, ge=0)
    # Policy recycles (leak, jobs, age) warm a successor before retiring the
    # old worker when a second copy fits, so readiness never drops.
    overlap_recycle: bool = True
    # Keep one spare worker process per slot that has already imported torch
    # and diffusers (no CUDA, no model): a restart or recycle hands it the
    # slot instead of paying a fresh interpreter's imports (zitops.agent.workers.standby).
    standby_worker: bool = True
    # The spare also loads a local model onto the host (pageable, no CUDA) when
    # offload is "none" and MemAvailable is >= 1.5x the weights, so the start it
    # serves only moves the pipeline to the GPU (docs/runtime.md "Standby spares").
    standby_preload: bool = True
    # A hot spare: a second worker per slot, loaded, warmed and idle, that takes
    # the slot at once when its worker dies, hangs or is recycled. "auto": on a
    # GPU with room for a second copy, never on the CPU; true: also on the CPU
    # (zitops.agent.workers.hot_spare, docs/runtime.md "Hot spares").
    hot_spare: Literal["auto"] | bool = "auto"
    # When a hot spare builds (load, compile, warm-up) on the serving GPU: "idle" only while the
    # slot's worker is idle (it pauses between steps when a job comes), "always" beside jobs.
    # "idle" is the default by the H100 measurement (benchmarks/device.sh spare-load, 2026-12-07): p99 under
    # 12 clients 1.00x without a build, against 1.45x for "always" (docs/runtime.md "Hot spares").
    spare_build: Literal["idle", "always"] = "idle"
    restart_backoff_s: float = Field(1.0, ge=0, le=600)
    restart_backoff_max_s: float = Field(60.0, ge=0, le=3_600)
    flap_limit: int = Field(5, ge=1, le=1_000)
    flap_window_s: float = Field(300.0, gt=0)
    # A worker, overlap successor or standby spare still in set-up after this
    # long is killed and replaced: generous, since the first load on a GPU
    # may include compile warm-up.
    startup_timeout_s: float = Field(600.0, gt=0, le=86_400)
