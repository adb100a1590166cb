"""``zitops doctor``'s /dev/shm check against a real tmpfs: a container's 64 MB one is short for big batches."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from zitops.preflight.doctor_checks import check_shm
from zitops.preflight.doctor_model import Setup
from zitops.profile import load_profile


def _setup(batch: int, gpus: list[int]) -> Setup:
    profile = load_profile("designer", [f"generation.batch={batch}", f"engine.max_batch={max(batch, 1)}"])
    return Setup(profile, "tiny", "127.0.0.1", 7860, gpus, {}, "k8s", "test")


@pytest.fixture()
def shm64(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs, as a container runtime's default /dev/shm (we are root; none is left mounted)."""
    where = tmp_path / "shm"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_runtimes_64_mb_shm_warns_for_big_batches_on_several_gpus(shm64: Path) -> None:
    one = check_shm(_setup(1, [0]), shm64)
    assert one.ok and not one.warning and "64 MiB free" in one.detail
    # 1024x1024 x8 on two GPUs: 24 MiB a job in flight and 24 made ahead, per worker, plus headroom.
    many = check_shm(_setup(8, [0, 1]), shm64)
    assert many.ok and many.warning and "go through the pipes" in many.detail
    assert many.fix is not None and "disk.shm_mib" in many.fix


def test_no_shm_at_all_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    missing = check_shm(_setup(1, [0]), tmp_path / "nothing")
    assert missing.ok and missing.warning and "pipes" in missing.detail
