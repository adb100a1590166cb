"""Image encoding: PNG text chunks (tEXt and iTXt), JPEG, WebP."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.engine_support import png_text
from zitops.engine.output import a1111_infotext, encode_image, format_for_path
from zitops.errors import InvalidRequest

PARAMS: dict[str, object] = {"prompt": "海报：新品上市 poster", "negative_prompt": "blurry", "seed": 42, "sampler": "dpmpp_2m",
          "schedule": "karras", "steps": 8, "guidance": 0.0, "profile": "poster", "model": "tiny"}


def _img() -> Image.Image:
    return Image.new("RGB", (32, 16), (10, 200, 30))


def test_png_carries_parameters_in_text_chunks() -> None:
    data = encode_image(_img(), "png", PARAMS)
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    text = png_text(im)
    assert text["prompt"] == PARAMS["prompt"]  # non-Latin-1 survives via iTXt
    assert text["seed"] == "42"
    assert text["sampler"] == "dpmpp_2m"
    assert text["steps"] == "8"
    assert text["size"] == "32x16"
    assert text["profile"] == "poster"
    assert text["model"] == "tiny"
    assert text["parameters"].startswith(f"{PARAMS['prompt']}\nNegative prompt: blurry\n")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text["parameters"]
    assert "Seed: 42, Size: 32x16" in text["parameters"]


def test_png_uses_fast_compression_and_marks_tiny_models() -> None:
    big = Image.merge("RGB", [Image.linear_gradient("L"), Image.radial_gradient("L"),
                              Image.linear_gradient("L").rotate(90)])
    fast = encode_image(big, "png", {"tiny": True})
    slow = io.BytesIO()
    big.save(slow, format="PNG", compress_level=9)
    assert len(fast) > len(slow.getvalue())  # level 1 trades size for speed
    assert png_text(Image.open(io.BytesIO(fast)))["zitops_notice"].startswith("tiny random model")


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp_decode(fmt: str, pil: str) -> None:
    im = Image.open(io.BytesIO(encode_image(_img(), fmt, PARAMS)))
    assert im.format == pil
    assert im.size == (32, 16)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="valid: png, jpeg, webp"):
        encode_image(_img(), "gif", {})


def test_infotext_skips_empty_fields_and_format_follows_suffix() -> None:
    text = a1111_infotext({"prompt": "cat", "steps": 4, "sampler": "euler", "seed": 1})
    assert text.splitlines()[0] == "cat"
    assert "Negative prompt" not in text
    assert format_for_path("out/x.JPG") == "jpeg"
    assert format_for_path("x.webp") == "webp"
    assert format_for_path("dir.v2/noext", "png") == "png"
