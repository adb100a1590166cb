"""The fast PNG writer: lossless, readable by Pillow, metadata intact, strips joined correctly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.engine_support import png_text
from zitops.engine import png_fast
from zitops.engine.output import encode_image


def _image(mode: str, w: int = 300, h: int = 200) -> Image.Image:
    rng = np.random.default_rng(len(mode) + w)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 3) % 256, (y * 5) % 256, (x + y) % 256, (x * y) % 256], -1)
    arr = (base + rng.integers(0, 9, base.shape)).astype(np.uint8)
    return Image.fromarray(arr, "RGBA").convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_round_trip_is_lossless(mode: str) -> None:
    img = _image(mode)
    back = Image.open(io.BytesIO(png_fast.encode_png(img)))
    back.load()
    assert back.mode == mode and back.size == img.size
    assert np.array_equal(np.asarray(back), np.asarray(img))


def test_many_strips_join_into_one_valid_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_fast, "MIN_STRIP_BYTES", 1024)
    img = _image("RGB", 257, 131)
    data = png_fast.encode_png(img)
    back = Image.open(io.BytesIO(data))
    back.load()
    assert np.array_equal(np.asarray(back), np.asarray(img))
    single = png_fast.deflate_parallel(b"\x02" + bytes(10), 11)
    assert single.startswith(png_fast.ZLIB_HEADER)


def test_text_chunks_before_and_after_idat_are_kept() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "a cat")
    info.add_itxt("parameters", "海报 text")
    info.add_text("late", "after", zip=False)
    chunks = [*info.chunks[:2], (b"tEXt", b"late\x00after", True)]
    data = png_fast.encode_png(_image("RGB", 40, 30), chunks)
    assert data.index(b"IDAT") < data.index(b"late")
    back = Image.open(io.BytesIO(data))
    back.load()
    assert png_text(back) == {"prompt": "a cat", "parameters": "海报 text", "late": "after"}


def test_other_modes_are_converted_and_engine_png_uses_it() -> None:
    pal = _image("RGB", 64, 48).convert("P")
    back = Image.open(io.BytesIO(png_fast.encode_png(pal)))
    assert back.mode == "RGB"
    assert np.array_equal(np.asarray(back), np.asarray(pal.convert("RGB")))
    blob = encode_image(_image("RGB", 64, 48), "png", {"prompt": "x", "seed": 3})
    parsed = Image.open(io.BytesIO(blob))
    text = png_text(parsed)
    assert text["seed"] == "3" and "Seed: 3" in text["parameters"]
