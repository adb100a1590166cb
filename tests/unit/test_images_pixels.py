"""The agent's zero-copy pixel view encodes exactly as the PIL image it stands for."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from zitops.agent.dispatch.images import EXTENSIONS, WARM_SIDE, Pixels, to_pil, warm_encoder
from zitops.engine.output import encode_image
from zitops.worker.protocol import RawImage

PARAMS = {"prompt": "a red fox", "seed": 7, "steps": 8, "sampler": "euler"}


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_png_from_the_view_is_byte_identical_to_png_from_pil(mode: str) -> None:
    channels = len(mode)
    shape = (48, 80, channels) if channels > 1 else (48, 80)
    data = np.random.default_rng(len(mode)).integers(0, 255, shape, dtype=np.uint8).tobytes()
    raw = RawImage(mode=mode, width=80, height=48, data=data, params=PARAMS)
    via_view = encode_image(Pixels(raw), "png", PARAMS)
    assert via_view == encode_image(to_pil(raw), "png", PARAMS)
    back = Image.open(io.BytesIO(via_view))
    assert back.mode == mode and back.tobytes() == data and back.size == (80, 48)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_other_formats_go_through_pil(fmt: str) -> None:
    data = np.full((32, 32, 3), 200, dtype=np.uint8).tobytes()
    blob = encode_image(Pixels(RawImage(mode="RGB", width=32, height=32, data=data)), fmt, PARAMS)
    assert Image.open(io.BytesIO(blob)).size == (32, 32)


def test_the_encoder_warm_up_runs_every_output_format_once_through_the_real_encoder() -> None:
    seen: list[tuple[str, tuple[int, int]]] = []

    def recording(img: Any, fmt: str, params: Any) -> bytes:
        seen.append((fmt, img.size))
        return encode_image(img, fmt, params)

    ms = warm_encoder(recording)
    assert [f for f, _ in seen] == list(EXTENSIONS) == list(ms) and all(v >= 0 for v in ms.values())
    assert {size for _, size in seen} == {(WARM_SIDE, WARM_SIDE)}
