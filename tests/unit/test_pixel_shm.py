"""Pixels from a worker through /dev/shm: written once, mapped by the agent, never left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zitops.agent.dispatch.images import Pixels, attach_pixels, to_pil, write_images
from zitops.engine.output import encode_image
from zitops.worker import pixel_shm
from zitops.worker.process import raw_image


def _image() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_worker_image_goes_through_shared_memory_and_the_agent_unlinks_it(tmp_path: Path) -> None:
    img = _image()
    raw = raw_image(img, {"seed": 1}, pixel_shm.PixelFiles())
    assert raw.data == b"" and raw.shm is not None and raw.nbytes == 48 * 64 * 3
    assert (pixel_shm.SHM_DIR / raw.shm).is_file()
    (attached,) = attach_pixels((raw,))
    assert attached.shm is None and not (pixel_shm.SHM_DIR / raw.shm).exists()  # unlinked as it was mapped
    assert to_pil(attached).tobytes() == img.tobytes()
    assert np.asarray(Pixels(attached)).tobytes() == img.tobytes()
    names = write_images(tmp_path, "j1", (attached,), "png", encode_image)
    with Image.open(tmp_path / names[0]) as back:
        assert back.tobytes() == img.tobytes()


def test_without_shared_memory_the_pixels_travel_inline(tmp_path: Path) -> None:
    assert pixel_shm.put(b"abc", tmp_path / "missing") is None  # no such tmpfs: the caller sends them inline
    raw = raw_image(_image(), {})
    assert raw.shm is None and len(raw.data) == raw.nbytes


def test_pixels_lost_in_transfer_fail_the_job_with_a_reason(tmp_path: Path) -> None:
    raw = raw_image(_image(), {}, pixel_shm.PixelFiles())
    assert raw.shm is not None
    (pixel_shm.SHM_DIR / raw.shm).unlink()  # swept, say, before the agent read the Result
    (lost,) = attach_pixels((raw,))
    assert lost.shm == raw.shm
    with pytest.raises(OSError, match="lost in transfer"):
        write_images(tmp_path, "j2", (lost,), "png", encode_image)
    assert list(tmp_path.iterdir()) == []


def test_attach_refuses_a_short_file_or_a_foreign_name(tmp_path: Path) -> None:
    name = pixel_shm.put(b"x" * 10, tmp_path)
    assert name is not None
    with pytest.raises(OSError, match="10 bytes, 12 expected"):
        pixel_shm.attach(name, 12, tmp_path)
    with pytest.raises(OSError, match="not a pixel file"):
        pixel_shm.attach("../etc/passwd", 1, tmp_path)


def test_sweep_removes_files_of_gone_workers_and_gone_agents_only(tmp_path: Path) -> None:
    me, dead = os.getpid(), _dead_pid()
    names = {
        "gone_worker": f"{pixel_shm.PREFIX}-{me}-{dead}-0",  # this agent's worker, killed: swept
        "live_worker": f"{pixel_shm.PREFIX}-{me}-{me}-1",  # a live process: kept
        "gone_agent": f"{pixel_shm.PREFIX}-{dead}-{me}-2",  # another agent that is gone: swept
        "live_agent": f"{pixel_shm.PREFIX}-{os.getppid()}-{dead}-3",  # another live agent's: not ours to judge
        "other": "something-else",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"p")
    assert pixel_shm.sweep(me, tmp_path) == 2
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names["live_worker"], names["live_agent"], names["other"]}


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pixels_packed_straight_into_the_file_are_exactly_tobytes(mode: str) -> None:
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).convert(mode)  # > one 64 KB block
    raw = raw_image(img, {}, pixel_shm.PixelFiles())
    assert raw.shm is not None and raw.nbytes == 200 * 300 * len(mode)
    (attached,) = attach_pixels((raw,))
    assert bytes(attached.data) == img.tobytes()


def test_a_short_pixel_file_is_removed_and_the_pixels_go_inline() -> None:
    ours = f"{pixel_shm.PREFIX}-{os.getppid()}-{os.getpid()}-"  # other processes share /dev/shm
    before = {p for p in pixel_shm.SHM_DIR.iterdir() if p.name.startswith(ours)}
    def short(fd: int) -> None:  # a full tmpfs, say
        os.write(fd, b"12345")

    assert pixel_shm.put_with(10, short) is None
    assert {p for p in pixel_shm.SHM_DIR.iterdir() if p.name.startswith(ours)} == before


def _writer(data: bytes) -> Callable[[int], None]:
    def write(fd: int) -> None:
        os.write(fd, data)

    return write


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_the_next_jobs_pixels_land_in_files_made_ahead_with_their_pages_allocated(tmp_path: Path) -> None:
    files = pixel_shm.PixelFiles(tmp_path)
    first = raw_image(_image(), {}, files)
    assert first.shm is not None and first.nbytes == 48 * 64 * 3
    (tmp_path / first.shm).unlink()  # the agent took it
    files.prepare()  # after the Result went
    ((ready, size),) = files.ready
    assert size == first.nbytes and _allocated(tmp_path / ready) >= size  # allocated before any pixel is in
    img = _image().transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    second = raw_image(img, {}, files)
    assert second.shm == ready and files.ready == []  # written over, not a new file
    assert bytes(pixel_shm.attach(ready, second.nbytes, tmp_path)) == img.tobytes()


def test_a_file_made_ahead_takes_an_image_of_another_size_exactly(tmp_path: Path) -> None:
    files = pixel_shm.PixelFiles(tmp_path)
    files.put_with(1000, _writer(b"a" * 1000))
    files.prepare()
    for n, data in enumerate((b"b" * 300, b"c" * 5000)):  # smaller: cut to size; larger: grown
        if n:
            files.prepare()
        name = files.put_with(len(data), _writer(data))
        assert name is not None and (tmp_path / name).read_bytes() == data
    assert len(list(tmp_path.iterdir())) == 3  # the first job's file, and two made ahead, each written over once


def test_files_made_ahead_are_bounded_and_removed_at_close(tmp_path: Path) -> None:
    files = pixel_shm.PixelFiles(tmp_path)
    big = pixel_shm.PREPARE_MAX_BYTES // 2 + 1
    for _ in range(2):
        files.put_with(big, lambda fd: os.ftruncate(fd, big))
    files.prepare()
    assert [size for _, size in files.ready] == [big]  # the second would pass the cap
    files.close()
    assert files.ready == [] and len(list(tmp_path.iterdir())) == 2  # only the two the agent would take
