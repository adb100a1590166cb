"""Agent-side image output: encode a worker's raw pixels and write the job's files.

Runs on the dispatcher's thread pool, never on the event loop: zlib and Pillow
release the GIL, so the loop stays responsive while a worker already runs its
next job. torch-free (PIL and numpy only).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from zitops.worker import pixel_shm
from zitops.worker.protocol import RawImage

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
"""File suffix per output format."""

Encoder = Callable[[Any, str, Mapping[str, Any]], bytes]
"""``encode_image(image, fmt, params) -> bytes``, or a test's stand-in for it."""

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_ABOVE_BYTES = 32 * 1024 * 1024
"""Blocks at least this large still get their own mmap (glibc's ceiling for the setting)."""
KEEP_FREED_BYTES = 128 * 1024 * 1024
"""Free memory a heap may keep before glibc returns it to the kernel."""


def keep_freed_memory() -> bool:
    """Let glibc reuse freed image-sized buffers instead of unmapping them; False where it cannot.

    Every request allocates several 3-4 MB buffers (pixels, PNG, base64,
    the body). By default glibc serves each from a fresh mmap and unmaps it
    on free, so every request page-faults ~1,000 pages per buffer: about
    10 ms of a 1024x1024 response on a 2-core host (docs/benchmarks.md).
    Kept in the heap, they are reused warm. The cost is a heap that stays
    at its high-water mark (tens of MB), bounded by KEEP_FREED_BYTES per arena.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. a static or musl build): keep the defaults
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def attach_pixels(images: tuple[RawImage, ...]) -> tuple[RawImage, ...]:
    """Each image's pixels in memory: a shared-memory file is mapped (and unlinked) in place of ``data``.

    Cheap (open, mmap, unlink; no copy), so it runs as the Result arrives: from then on no sweep
    can take the file. An image whose file is gone keeps ``shm`` set and fails its encode.
    """
    out = []
    for raw in images:
        if raw.shm is not None:
            with contextlib.suppress(OSError):
                raw = replace(raw, data=pixel_shm.attach(raw.shm, raw.nbytes), shm=None)
        out.append(raw)
    return tuple(out)


def release_pixels(images: tuple[RawImage, ...]) -> None:
    """Unmap the images' pixel files once they are encoded: tmpfs frees their pages then.

    That free took 0.35 ms per 1024x1024 image on the dev box
    (benchmarks/results/cpu-2026-12-08-pixel-path.json); left to the garbage
    collector, it ran on the event loop as the job finished, in the
    synchronous waiter's way. A mapping something still reads
    (a view held by a traceback) stays for the collector.
    """
    for raw in images:
        if isinstance(raw.data, mmap.mmap):
            with contextlib.suppress(BufferError):
                raw.data.close()


def image_names(job_id: str, count: int, fmt: str) -> tuple[str, ...]:
    """The server-chosen file names of a job's images: ``<job_id>-<n>.<ext>``."""
    ext = EXTENSIONS.get(fmt, fmt)
    return tuple(f"{job_id}-{n}.{ext}" for n in range(count))


def to_pil(raw: RawImage) -> Any:
    """The PIL image of raw pixels from a worker."""
    from PIL import Image

    return Image.frombytes(raw.mode, (raw.width, raw.height), memoryview(raw.data))


class Pixels:
    """A worker's raw pixels as the encoder sees an image: ``mode``, ``size``, a numpy view.

    The PNG writer reads pixels through numpy; building a PIL image first
    and reading it back cost two 3 MB copies per 1024x1024 image on the
    response path. JPEG and WebP still go through PIL (:meth:`to_pil`).
    """

    def __init__(self, raw: RawImage) -> None:
        self.raw = raw
        self.mode = raw.mode
        self.size = (raw.width, raw.height)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        """A read-only view of the pixels, (height, width[, channels]) uint8."""
        import numpy as np

        channels = len(self.mode)
        shape = (self.raw.height, self.raw.width) + ((channels,) if channels > 1 else ())
        return np.frombuffer(self.raw.data, dtype=np.uint8).reshape(shape)

    def getbands(self) -> tuple[str, ...]:
        """The band names, as PIL's ``Image.getbands``."""
        return tuple(self.mode)

    def to_pil(self) -> Any:
        """The PIL image (a copy)."""
        return to_pil(self.raw)


def write_images(output_dir: Path, job_id: str, images: tuple[RawImage, ...], fmt: str,
                 encode: Encoder) -> tuple[str, ...]:
    """Encode and write every image (temp name, then ``os.replace``); all or none stay; returns the names."""
    return encode_and_write(output_dir, job_id, images, fmt, encode)[0]


def encode_and_write(output_dir: Path, job_id: str, images: tuple[RawImage, ...], fmt: str,
                     encode: Encoder) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    """Encode and write every image; returns the file names and the encoded bytes.

    The bytes go straight to a synchronous client, so its response never
    reads back the file just written. No fsync: a file lost to a power cut
    is a result the client already has or can regenerate by seed
    (docs/api.md, "Durability"). On any error the files already written for
    this job are removed, so a failed job leaves nothing that retention
    would not find.
    """
    blobs = encode_images(images, fmt, encode)
    names = image_names(job_id, len(images), fmt)
    write_encoded(output_dir, names, blobs)
    return names, blobs


def encode_images(images: tuple[RawImage, ...], fmt: str, encode: Encoder) -> tuple[bytes, ...]:
    """Every image encoded, in order; an image whose pixels were lost in transfer raises OSError."""
    blobs: list[bytes] = []
    for n, raw in enumerate(images):
        if raw.shm is not None:
            raise OSError(f"the pixels of image {n} were lost in transfer (shared-memory file {raw.shm} gone)")
        blobs.append(encode(Pixels(raw), fmt, raw.params))
    return tuple(blobs)


def write_encoded(output_dir: Path, names: tuple[str, ...], blobs: tuple[bytes, ...]) -> None:
    """Write each image (temp name, then ``os.replace``); all or none stay."""
    written: list[Path] = []
    try:
        for name, blob in zip(names, blobs, strict=True):
            path = output_dir / name
            tmp = path.with_name(f".{name}.tmp")
            try:
                tmp.write_bytes(blob)
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            written.append(path)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise


WARM_SIDE = 512
"""The warm-up image's side: 768 KB of RGB, above the PNG writer's strip size, so its threads start too."""


def warm_encoder(encode: Encoder, formats: tuple[str, ...] = tuple(EXTENSIONS)) -> dict[str, float]:
    """Encode one throwaway image per output format, so no request pays the encoder's first call; ms each.

    The first call imports numpy, Pillow's plugins and the PNG writer's
    deflate backend and starts its threads: on the CPU dev box (tiny model,
    256x256, 2026-12-07) the first request's ``encode`` stage was 123.7 ms
    against 2.4 ms for the next
    (benchmarks/results/cpu-2026-12-07-agent-first-requests.json). Half the rows are noise (stored) and half
    flat (deflated), so both of the PNG writer's paths run.
    """
    side = WARM_SIDE
    half = side * side * 3 // 2
    raw = RawImage(mode="RGB", width=side, height=side, data=os.urandom(half) + bytes(side * side * 3 - half))
    out = {}
    for fmt in formats:
        started = time.perf_counter()
        encode(Pixels(raw), fmt, {})
        out[fmt] = round((time.perf_counter() - started) * 1000.0, 1)
    return out
