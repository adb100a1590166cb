"""A fast PNG writer: the "Up" row filter in numpy and deflate split across threads.

Pillow's PNG encoder filters row by row in C and deflates on one core: about
200 ms for a 1024x1024 image on a Hopper host, most of the agent's overhead
per request (issue 7). This writer produces a standard PNG that any decoder
reads: one "Up"-filtered scanline stream, deflated in horizontal strips in
parallel (zlib releases the GIL), the raw deflate pieces joined with sync
flushes under one zlib header and Adler-32, as pigz does. A strip whose
samples do not compress (noise) is stored instead of deflated: its stored
blocks are written here, as 5-byte headers around slices of the scanlines,
so its bytes are copied once, into the PNG (zlib's level 0 copied them
twice and cost 1.7 to 4 ms per 3 MB on the dev box). The checksums (CRC-32,
Adler-32) come from ISA-L where it is installed: about 3x faster than
zlib's over 3 MB, the same values. Output is lossless; files are somewhat
larger than Pillow's adaptive filtering would give. torch-free.
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
PROBE_BYTES = 16 * 1024  # three samples per strip decide whether deflating it is worth it
STORE_ABOVE = 0.97  # samples that deflate to more than this fraction of their size: store the strip
STORED_MAX = 0xFFFF  # a stored deflate block holds at most 65,535 bytes (RFC 1951, 3.2.4)

_fast: Any
try:  # ISA-L's deflate: the same format, ~4x faster than zlib at level 1 (docs/benchmarks.md)
    from isal import isal_zlib as _fast

    DEFLATE_BACKEND = "isal"
except ImportError:  # optional: the [fast] extra; zlib gives the same PNG, only slower
    _fast = None
    DEFLATE_BACKEND = "zlib"

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="png")
    return _pool


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _scanlines(pixels: Any) -> memoryview:
    """Rows prefixed with the Up filter byte, each row minus the one above (mod 256); no copy out."""
    import numpy as np

    rows = pixels.reshape(pixels.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG wants
    flat: memoryview = out.reshape(-1).data
    return flat


def incompressible(data: memoryview | bytes, level: int) -> bool:
    """True when samples of ``data`` (start, middle, end) do not deflate below STORE_ABOVE of their size."""
    view = memoryview(data)
    n = len(view)
    if n <= 3 * PROBE_BYTES:
        probe = bytes(view)
    else:
        mid = n // 2 - PROBE_BYTES // 2
        probe = b"".join((view[:PROBE_BYTES], view[mid:mid + PROBE_BYTES], view[n - PROBE_BYTES:]))
    lib: Any = _fast if _fast is not None else zlib
    return len(lib.compress(probe, min(max(1, level), 3) if lib is _fast else max(1, level))) > STORE_ABOVE * len(probe)


def _checksums() -> Any:
    """The module whose crc32/adler32 to use: ISA-L's when installed (same values, faster), else zlib."""
    return _fast if _fast is not None else zlib


def stored_blocks(data: memoryview | bytes, last: bool) -> list[bytes | memoryview]:
    """Raw-deflate stored blocks of ``data``: headers and slices of it (not copied); BFINAL on the last if ``last``.

    Each block starts on a byte boundary and ends on one, so the pieces
    before and after (sync-flushed deflate, other stored strips) join as they are.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    if n == 0:
        return [struct.pack("<BHH", 1 if last else 0, 0, 0xFFFF)]
    out: list[bytes | memoryview] = []
    for pos in range(0, n, STORED_MAX):
        size = min(STORED_MAX, n - pos)
        final = last and pos + size == n
        out += [struct.pack("<BHH", 1 if final else 0, size, size ^ 0xFFFF), view[pos:pos + size]]
    return out


def _deflate_piece(data: memoryview | bytes, level: int, last: bool) -> list[bytes | memoryview]:
    # Noise (a random-weight model's output, or a photo's grain) does not
    # deflate: spending ~55 ms of CPU per 3 MB to learn that is pure overhead,
    # so such strips are stored. Compressible strips keep ``level``.
    if level <= 0 or incompressible(data, level):
        return stored_blocks(data, last)
    lib: Any = _fast if _fast is not None else zlib
    comp = lib.compressobj(min(level, 3) if lib is _fast else level, lib.DEFLATED, -15)
    return [comp.compress(data), comp.flush(lib.Z_FINISH if last else lib.Z_SYNC_FLUSH)]


def _deflate_pieces(raw: memoryview | bytes, row_bytes: int,
                    level: int) -> tuple[list[bytes | memoryview], int]:
    """Raw-deflate pieces of ``raw`` in row-aligned strips, and the Adler-32 of ``raw``.

    Strips are memoryview slices (never copied); the calling thread deflates
    the first strip itself and computes the checksum while the pool runs the rest.
    """
    view = memoryview(raw)
    rows = len(view) // row_bytes
    strips = max(1, min(_executor()._max_workers + 1, len(view) // MIN_STRIP_BYTES))
    per = -(-rows // strips)
    bounds = [(i * per * row_bytes, min(rows, (i + 1) * per) * row_bytes) for i in range(strips)]
    bounds = [(a, b) for a, b in bounds if b > a]
    last = len(bounds) - 1
    futures = [_executor().submit(_deflate_piece, view[a:b], level, i == last)
               for i, (a, b) in enumerate(bounds) if i > 0]
    a, b = bounds[0]
    pieces = _deflate_piece(view[a:b], level, last == 0)
    adler = _checksums().adler32(view)
    for f in futures:
        pieces += f.result()
    return pieces, adler


def deflate_parallel(raw: memoryview | bytes, row_bytes: int, level: int = 1) -> bytes:
    """A zlib stream of ``raw``, compressed in row-aligned strips on a thread pool."""
    pieces, adler = _deflate_pieces(raw, row_bytes, level)
    return b"".join([ZLIB_HEADER, *pieces, struct.pack(">I", adler)])


def encode_png(image: Any, chunks: Iterable[tuple[bytes, bytes, bool]] = (), level: int = 1) -> bytes:
    """PNG bytes for a PIL image (L, RGB or RGBA; others are converted to RGB).

    ``chunks`` are ancillary chunks as Pillow's ``PngInfo.chunks`` holds them:
    (type, data, after_idat). The image data is copied once, into the result.
    """
    import numpy as np

    if image.mode not in COLOR_TYPES:
        pil = image.to_pil() if hasattr(image, "to_pil") else image
        image = pil.convert("RGBA" if "A" in pil.getbands() else "RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    height, width = pixels.shape[0], pixels.shape[1]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    raw = _scanlines(pixels)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[image.mode], 0, 0, 0)
    extra = list(chunks)
    pieces, adler = _deflate_pieces(raw, width * channels + 1, level)
    idat = [ZLIB_HEADER, *pieces, struct.pack(">I", adler)]
    crc32 = _checksums().crc32
    crc = crc32(b"IDAT")
    for piece in idat:
        crc = crc32(piece, crc)
    parts: list[bytes | memoryview] = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    parts += [_chunk(kind, data) for kind, data, after in extra if not after]
    parts += [struct.pack(">I", sum(len(p) for p in idat)), b"IDAT", *idat, struct.pack(">I", crc)]
    parts += [_chunk(kind, data) for kind, data, after in extra if after]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
