"""Agent-side output on the response path: stored noise strips, bytes handed over, malloc tuning."""

from __future__ import annotations

import io
import platform
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zitops.agent.dispatch.images import encode_and_write, keep_freed_memory, write_images
from zitops.engine import png_fast
from zitops.engine.faulty import synthetic_image
from zitops.engine.output import encode_image
from zitops.worker.protocol import RawImage


def _noise(w: int, h: int, seed: int = 1) -> Image.Image:
    return synthetic_image(seed, w, h, "noise")


def _decoded(data: bytes) -> np.ndarray:
    back = Image.open(io.BytesIO(data))
    back.load()
    return np.asarray(back)


def _stored_blocks(png: bytes) -> bool:
    """True when the IDAT stream's first deflate block is a stored one (BTYPE 00)."""
    start = png.index(b"IDAT") + 4 + 2  # past the chunk type and the zlib header
    return (png[start] >> 1) & 0b11 == 0


@pytest.fixture(params=["zlib", "isal"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each deflate backend png_fast can use: stdlib zlib always, ISA-L where it is installed."""
    if request.param == "isal":
        monkeypatch.setattr(png_fast, "_fast", pytest.importorskip("isal.isal_zlib"))
    else:
        monkeypatch.setattr(png_fast, "_fast", None)
    return str(request.param)


@pytest.mark.usefixtures("backend")
def test_noise_is_stored_losslessly_and_compressible_images_still_deflate() -> None:
    noise = _noise(512, 512)
    data = png_fast.encode_png(noise)
    assert np.array_equal(_decoded(data), np.asarray(noise)) and _stored_blocks(data)
    assert png_fast.incompressible(noise.tobytes(), 1)
    blobs = synthetic_image(1, 512, 512, "blobs")
    packed = png_fast.encode_png(blobs)
    assert np.array_equal(_decoded(packed), np.asarray(blobs)) and not _stored_blocks(packed)
    assert len(packed) < 0.6 * len(blobs.tobytes())
    assert not png_fast.incompressible(bytes(200_000), 1)


@pytest.mark.usefixtures("backend")
def test_half_noise_half_flat_picks_per_strip_and_stays_one_valid_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_fast, "MIN_STRIP_BYTES", 64 * 1024)
    arr = np.asarray(_noise(256, 512)).copy()
    arr[256:] = 7  # the lower half compresses to almost nothing
    img = Image.fromarray(arr, "RGB")
    data = png_fast.encode_png(img)
    assert np.array_equal(_decoded(data), arr)
    assert len(data) < 0.7 * arr.size  # the flat strips were deflated, the noisy ones stored
    stream = png_fast.deflate_parallel(png_fast._scanlines(arr), 256 * 3 + 1)
    assert zlib.decompress(stream) == bytes(png_fast._scanlines(arr))


def test_encode_and_write_returns_exactly_the_bytes_it_wrote(tmp_path: Path) -> None:
    img = _noise(64, 48)
    raws = (RawImage("RGB", 64, 48, img.tobytes(), {"prompt": "x", "seed": 1}),) * 2
    names, blobs = encode_and_write(tmp_path, "job7", raws, "png", encode_image)
    assert names == ("job7-0.png", "job7-1.png") and len(blobs) == 2
    assert [(tmp_path / n).read_bytes() for n in names] == list(blobs)
    assert np.array_equal(_decoded(blobs[0]), np.asarray(img))
    assert write_images(tmp_path, "job8", raws[:1], "png", encode_image) == ("job8-0.png",)


def test_malloc_tuning_applies_on_glibc_linux_only() -> None:
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc


@pytest.mark.parametrize("size", [0, 1, png_fast.STORED_MAX, png_fast.STORED_MAX + 1, 3 * png_fast.STORED_MAX + 7])
def test_stored_blocks_are_one_valid_raw_deflate_stream_that_ends_only_when_last(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    final = zlib.decompressobj(-15)
    assert final.decompress(b"".join(png_fast.stored_blocks(data, True))) == data and final.eof
    more = zlib.decompressobj(-15)
    assert more.decompress(b"".join(png_fast.stored_blocks(data, False))) == data and not more.eof


@pytest.mark.usefixtures("backend")
def test_idat_crc_and_adler_are_the_standard_ones() -> None:
    """Pillow does not check IDAT's CRC: the chunk and the zlib stream are checked here with zlib itself."""
    noise = np.asarray(_noise(700, 300)).copy()
    noise[200:] = 3  # stored strips and deflated strips in one stream
    data = png_fast.encode_png(Image.fromarray(noise, "RGB"))
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    body = data[at + 4:at + 4 + length]
    assert int.from_bytes(data[at + 4 + length:at + 8 + length], "big") == zlib.crc32(b"IDAT" + body)
    assert zlib.decompress(body) == bytes(png_fast._scanlines(noise))  # checks the Adler-32 too
