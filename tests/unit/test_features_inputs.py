"""The edges of issue 15's features, without an agent: input-image bounds, LoRA prompt tags, the progress board."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.engine_support import agent_config
from zitops.agent.http.image_input import checked_png, from_base64, open_image
from zitops.agent.progress import ProgressBoard
from zitops.engine.features.lora_files import strip_prompt_loras
from zitops.errors import InvalidRequest

MIB = 2**20


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A real, valid PNG of side x side black pixels: a few KiB that decode to side**2 bytes."""
    squeeze = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then zeros
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def refused(field: str, data: bytes, *, max_bytes: int = 32 * MIB, max_pixels: int = 4096 * 4096) -> str:
    with pytest.raises(InvalidRequest) as caught:
        open_image(field, data, max_bytes=max_bytes, max_pixels=max_pixels)
    message = str(caught.value)
    assert caught.value.http_status == 422 and message.startswith(f"{field}: ") and "\n" not in message, message
    return message


# --- input images ----------------------------------------------------------------------------


def test_a_good_image_of_each_allowed_format_opens() -> None:
    picture = Image.effect_noise((24, 16), 40).convert("RGB")
    for fmt in ("PNG", "JPEG", "WEBP"):
        image = open_image("init_images", png_bytes(picture, fmt), max_bytes=MIB, max_pixels=1000)
        assert image.size == (24, 16) and image.format == fmt


def test_junk_bytes_are_refused_naming_the_field() -> None:
    assert "allowed formats: png, jpeg, webp" in refused("init_images", b"hello, this is not an image")
    assert "empty" in refused("mask", b"")
    # The PNG signature followed by junk: recognised as PNG, then refused by the decoder.
    assert "could not be read as png" in refused("image", b"\x89PNG\r\n\x1a\n" + b"\x00junk" * 20)
    # A truncated PNG: the header reads, the pixels do not.
    whole = png_bytes(Image.effect_noise((64, 64), 90).convert("RGB"))
    assert "could not be decoded as png" in refused("image", whole[: len(whole) // 2])
    with pytest.raises(InvalidRequest, match=r"^init_images: not valid base64"):
        from_base64("init_images", "***")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_a_wrong_format_is_refused_by_its_bytes(fmt: str) -> None:
    data = png_bytes(Image.new("RGB", (8, 8)), fmt)
    assert "not a PNG, JPEG or WebP" in refused("mask", data)


def test_a_png_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = png_bomb(5000)
    assert len(bomb) < 64 * 1024, len(bomb)  # tiny on the wire, 25 MB of pixels
    message = refused("init_images", bomb)
    assert "5000x5000 pixels" in message and "limits.max_image_pixels" in message
    # Under a limit it would fit, the same bytes open: the refusal is the pixel bound, not the file.
    assert open_image("x", bomb, max_bytes=MIB, max_pixels=5000 * 5000).size == (5000, 5000)
    # A header far past PIL's own bomb check gets the same one-line answer.
    huge = bytearray(png_bomb(1))
    huge[16:24] = struct.pack(">II", 100_000, 100_000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    assert "limits.max_image_pixels" in refused("image", bytes(huge))


def test_over_the_byte_cap_is_refused_before_decoding(tmp_path: Path) -> None:
    data = png_bytes(Image.effect_noise((128, 128), 90).convert("RGB"))
    message = refused("image", data, max_bytes=len(data) - 1)
    assert f"{len(data)} bytes, larger than {len(data) - 1}" in message and "limits.max_image_body_bytes" in message
    # Through the config's limits, as the routes call it: the default cap and the PNG re-encoding.
    config = agent_config(tmp_path)
    text, size = checked_png(config, "init_images", data, "RGB")
    assert size == (128, 128) and Image.open(io.BytesIO(base64.b64decode(text))).format == "PNG"
    over = config.limits.max_image_body_bytes + 1
    with pytest.raises(InvalidRequest, match=rf"^init_images: {over} bytes, larger than"):
        checked_png(config, "init_images", data + bytes(over - len(data)), "RGB")


# --- <lora:NAME:WEIGHT> tags ---------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "cleaned", "wanted"), [
    ("a cat <lora:foo:0.5>", "a cat", [("foo", 0.5)]),
    ("a cat <lora:foo>", "a cat", [("foo", 1.0)]),
    ("a cat <lora:foo:>", "a cat", [("foo", 1.0)]),
    ("<lora: my lora : 0.7 > a cat", "a cat", [("my lora", 0.7)]),
    ("<lora:a:1><lora:b:-0.5> a cat <lora:c:2>", "a cat", [("a", 1.0), ("b", -0.5), ("c", 2.0)]),
    ("a cat <lora:foo:0.5:te=1>", "a cat", [("foo", 0.5)]),  # A1111's extra te/unet fields: ignored
    ("a cat <lora:foo:0.5:1:2>", "a cat", [("foo", 0.5)]),
    ("a cat", "a cat", []),
    ("a cat <lora:>", "a cat <lora:>", []),  # no name: not a tag, left in the prompt
    ("a cat <lora:foo", "a cat <lora:foo", []),  # unclosed: not a tag
])
def test_prompt_lora_tags(prompt: str, cleaned: str, wanted: list[tuple[str, float]]) -> None:
    assert strip_prompt_loras(prompt) == (cleaned, wanted)


@pytest.mark.parametrize("prompt", ["a cat <lora:foo:abc>", "a cat <lora:foo:1e>", "<lora:foo:0.5x>",
                                    "<lora:foo:high:1>"])
def test_a_malformed_weight_names_the_prompt_and_the_tag(prompt: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^prompt: <lora:foo:[^>]*> has a weight that is not a number$"):
        strip_prompt_loras(prompt)


# --- the progress board -----------------------------------------------------------------------


def drain(feed: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not feed.empty():
        out.append(feed.get_nowait())
    return out


def test_progress_steps_are_monotonic_and_reach_n_of_n() -> None:
    board = ProgressBoard()
    feed = board.subscribe("j1")
    board.queued("j1", steps=4, owner="t")
    assert board.get("j1") is not None and board.get("j1").fraction == 0.0  # type: ignore[union-attr]
    board.started("j1")
    assert board.running(owner="t", any_owner=False)[0].job_id == "j1"
    fractions = []
    for step in range(1, 5):
        board.step("j1", step, 4, b"png" if step == 2 else None)
        fractions.append(board.get("j1").fraction)  # type: ignore[union-attr]
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    board.finished("j1", "succeeded")
    events = drain(feed)
    assert [e["event"] for e in events] == ["queued", "started", "step", "step", "step", "step", "done"]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [1, 2, 3, 4] and events[-1]["step"] == events[-1]["steps"] == 4
    assert [e.get("preview") for e in events if e["event"] == "step"] == [None, b"png", None, None]
    assert board.get("j1").fraction == 1.0 and not board.running()  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "event"), [("failed", "failed"), ("cancelled", "cancelled")])
def test_progress_finished_states(status: str, event: str) -> None:
    board = ProgressBoard()
    board.queued("j", steps=10)
    board.started("j")
    board.step("j", 3, 10, None)
    feed = board.subscribe("j")
    board.finished("j", status, error="boom")
    (last,) = drain(feed)
    assert last["event"] == event and last["step"] == 3  # stopped where it was, not n of n
    assert ("error" in last) == (status == "failed")
    assert board.get("j").state == event and not board.running()  # type: ignore[union-attr]


def test_an_interrupted_job_ends_done_at_the_step_it_stopped() -> None:
    board = ProgressBoard()
    board.queued("j", steps=50)
    board.started("j")
    board.step("j", 2, 50, None)
    board.finished("j", "succeeded", stopped_at=2)
    job = board.get("j")
    assert job is not None and job.state == "done" and job.step == 2 and job.fraction == 1.0


def test_a_slow_reader_loses_steps_never_the_end_and_running_jobs_are_kept() -> None:
    from zitops.agent.progress import FEED_DEPTH

    board = ProgressBoard(keep=2)
    feed = board.subscribe("slow")
    board.queued("slow", steps=500)
    board.started("slow")
    for step in range(1, 301):
        board.step("slow", step, 500, None)
    board.finished("slow", "succeeded")
    events = drain(feed)
    assert len(events) == FEED_DEPTH and events[-1]["event"] == "done"
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == sorted(steps)
    board.queued("run", steps=2)
    board.started("run")
    for i in range(5):
        board.queued(f"q{i}", steps=2)
        board.finished(f"q{i}", "failed", error="x")
    assert board.get("run") is not None and board.get("slow") is None and len(board.jobs) <= 3
