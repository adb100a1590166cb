"""The real leak drill on a GPU: real CUDA memory per job, NVML's high-water rule recycles, the memory comes back."""

from __future__ import annotations

import json

import pytest

from zitops.drill import run_drill

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]


def test_the_real_leak_drill_is_caught_by_nvml_and_the_memory_returns() -> None:
    report = run_drill("leak", timeout_s=400, real=True)
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    print("real leak drill report:", json.dumps(report.to_dict(), default=str))
    assert report.error is None, report.error
    assert failed == [], failed
    names = [c.name for c in report.checks]
    # The GPU branch ran, not the host's allocator rule.
    assert "the leak was detected by NVML's high-water rule" in names
    assert report.jobs["lost"] == 0 and report.figures["leak_mib_per_job"] >= 1024
