"""A fast PNG writer: the "Up" row filter in numpy and deflate split across threads.

Pillow's PNG encoder filters row by row in C and deflates on one core: about
200 ms for a 1024x1024 image on a Hopper host, most of the agent's overhead
per request (issue 7). This writer produces a standard PNG that any decoder
reads: one "Up"-filtered scanline stream, deflated in horizontal strips in
parallel (zlib releases the GIL), the raw deflate pieces joined with sync
flushes under one zlib header and Adler-32, as pigz does. Output is lossless;
files are somewhat larger than Pillow's adaptive filtering would give.
torch-free.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}
FILTER_UP = 2
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, fastest-level hint; (0x7801 % 31 == 0)
MIN_STRIP_BYTES = 256 * 1024  # below this a strip costs more in thread hand-off than it saves

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="png")
    return _pool


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _scanlines(pixels: Any) -> bytes:
    """Rows prefixed with the Up filter byte, each row minus the one above (mod 256)."""
    import numpy as np

    rows = pixels.reshape(pixels.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG wants
    return out.tobytes()


def _deflate_piece(data: bytes, level: int, last: bool) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def deflate_parallel(raw: bytes, row_bytes: int, level: int = 1) -> bytes:
    """A zlib stream of ``raw``, compressed in row-aligned strips on a thread pool."""
    rows = len(raw) // row_bytes
    strips = max(1, min(_executor()._max_workers, len(raw) // MIN_STRIP_BYTES))
    per = -(-rows // strips)
    bounds = [(i * per * row_bytes, min(rows, (i + 1) * per) * row_bytes) for i in range(strips)]
    bounds = [(a, b) for a, b in bounds if b > a]
    view = memoryview(raw)
    if len(bounds) == 1:
        pieces = [_deflate_piece(raw, level, True)]
    else:
        futures = [_executor().submit(_deflate_piece, bytes(view[a:b]), level, i == len(bounds) - 1)
                   for i, (a, b) in enumerate(bounds)]
        pieces = [f.result() for f in futures]
    return ZLIB_HEADER + b"".join(pieces) + struct.pack(">I", zlib.adler32(raw))


def encode_png(image: Any, chunks: Iterable[tuple[bytes, bytes, bool]] = (), level: int = 1) -> bytes:
    """PNG bytes for a PIL image (L, RGB or RGBA; others are converted to RGB).

    ``chunks`` are ancillary chunks as Pillow's ``PngInfo.chunks`` holds them:
    (type, data, after_idat).
    """
    import numpy as np

    if image.mode not in COLOR_TYPES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    height, width = pixels.shape[0], pixels.shape[1]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    raw = _scanlines(pixels)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[image.mode], 0, 0, 0)
    extra = list(chunks)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    parts += [_chunk(kind, data) for kind, data, after in extra if not after]
    parts.append(_chunk(b"IDAT", deflate_parallel(raw, width * channels + 1, level)))
    parts += [_chunk(kind, data) for kind, data, after in extra if after]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
