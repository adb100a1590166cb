"""Agent-side image writing: raw pixels from a worker in, whole files out (or none)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.engine_support import png_text
from zitops.agent.dispatch.images import image_names, to_pil, write_images
from zitops.engine.output import encode_image
from zitops.worker.process import raw_image


def _image(mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", (32, 16))
    img.putdata([(x * 7 % 256, y * 13 % 256, (x + y) % 256) for y in range(16) for x in range(32)])
    return img.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_raw_pixels_round_trip_exactly(mode: str) -> None:
    img = _image(mode)
    raw = raw_image(img, {"seed": 3})
    assert (raw.mode, raw.width, raw.height) == (mode, 32, 16)
    assert to_pil(raw).tobytes() == img.tobytes()


def test_other_modes_become_rgb_and_params_become_plain_json() -> None:
    class Version(str):
        """Stands in for a library's str subclass (torch's TorchVersion)."""

    raw = raw_image(_image().convert("P"), {"seed": 5, "torch": Version("2.1")})
    assert raw.mode == "RGB"
    assert type(raw.params["torch"]) is str and raw.params["seed"] == 5


def test_write_images_names_files_and_keeps_png_text(tmp_path: Path) -> None:
    raws = tuple(raw_image(_image(), {"prompt": "一只狐狸", "seed": s, "steps": 8}) for s in (1, 2))
    names = write_images(tmp_path, "job1", raws, "png", encode_image)
    assert names == ("job1-0.png", "job1-1.png") == image_names("job1", 2, "png")
    with Image.open(tmp_path / names[1]) as img:
        assert png_text(img)["prompt"] == "一只狐狸" and png_text(img)["seed"] == "2"
        assert img.convert("RGB").tobytes() == _image().tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == list(names)
    assert write_images(tmp_path, "j2", raws[:1], "jpeg", encode_image) == ("j2-0.jpg",)


def test_write_images_is_all_or_nothing(tmp_path: Path) -> None:
    def fails_on_second(image: Any, fmt: str, params: Mapping[str, Any]) -> bytes:
        if params["seed"] == 2:
            raise ValueError("broken encoder")
        return encode_image(image, fmt, params)

    raws = tuple(raw_image(_image(), {"seed": s}) for s in (1, 2))
    with pytest.raises(ValueError, match="broken encoder"):
        write_images(tmp_path, "job1", raws, "png", fails_on_second)
    assert list(tmp_path.iterdir()) == []
