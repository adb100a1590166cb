"""Input images from clients (img2img, inpaint, edits): bounded, checked, re-encoded as PNG for the worker.

Only PNG, JPEG and WebP are opened, recognised by their first bytes rather
than by anything the client claims. The byte size is checked before
decoding, and the pixel count from the header before the pixels are
decoded, so a decompression bomb is refused without being expanded. Every
problem is an InvalidRequest naming the field. The worker receives a PNG
this module wrote, never the client's bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request

from zitops.agent.http.api_common import ClientGone
from zitops.agent.http.tenants import caller
from zitops.config import AgentConfig
from zitops.errors import InvalidRequest, QueueFull

FORMATS = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff"}
"""Signatures; WebP is RIFF....WEBP, checked apart."""
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]{1,32};base64,")
T = TypeVar("T")

MAX_JPEG_SCANS = 64
"""Start-of-scan markers a JPEG may have. A progressive JPEG from libjpeg has about 10; each scan
re-walks the whole image, so 20,000 repeated scans in a 1 MB file took 25 s to decode (issue 27)."""
DECODE_WORKERS = 2
DECODE_BUDGET_S = 10.0
"""Seconds one input image may take to decode before its request is refused (the pool stays bounded)."""
DECODE_PER_TOKEN = 1
"""Decodes one token may have on the pool at once, while tokens exist: one tenant's images never hold
every decode thread, so another tenant's decode always has one (a second upload waits its turn: a 429)."""
DISCONNECT_CHECK_S = 0.25
_DECODE_POOL = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="zitops-decode")
"""Input images decode here, not on asyncio's default pool, which also serves image GETs and responses:
a slow decode can delay only other decodes."""
_DECODING: dict[str, int] = {}
"""Decodes on the pool (running or waiting for a thread) per token's SHA-256, until the thread is done."""


async def decode_off_loop(field: str, fn: Callable[..., T], *args: Any, request: Request | None = None,
                          **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the decode pool, within :data:`DECODE_BUDGET_S` and the caller's share.

    With ``request``: a token with :data:`DECODE_PER_TOKEN` decodes still on the pool gets a 429, and a
    client that hangs up stops waiting (a decode not yet started never runs; one running ends within
    the byte, pixel and scan caps, and its token's count drops only then).
    """
    owner = caller(request).owner if request is not None else None
    if owner is not None and _DECODING.get(owner, 0) >= DECODE_PER_TOKEN:
        raise QueueFull(f"{field}: this token already has {DECODE_PER_TOKEN} image(s) decoding, its share of "
                        "the decode pool; retry when that request has its answer", retry_after_s=1)
    loop = asyncio.get_running_loop()
    work = _DECODE_POOL.submit(fn, *args, **kwargs)
    if owner is not None:  # counted until the thread is done with it, not until this request stops waiting
        _DECODING[owner] = _DECODING.get(owner, 0) + 1
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(_release, owner))
    future = asyncio.wrap_future(work)
    deadline = loop.time() + DECODE_BUDGET_S
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            work.cancel()
            raise InvalidRequest(f"{field}: took more than {DECODE_BUDGET_S:g} s to decode; send a simpler "
                                 "image (a baseline JPEG, a PNG or a WebP)")
        done, _ = await asyncio.wait({future}, timeout=min(remaining, DISCONNECT_CHECK_S))
        if done:
            return future.result()
        if request is not None and await request.is_disconnected():
            work.cancel()
            raise ClientGone(f"{field}: the client disconnected while its image was decoding")


def _release(owner: str) -> None:
    left = _DECODING.get(owner, 0) - 1
    if left > 0:
        _DECODING[owner] = left
    else:
        _DECODING.pop(owner, None)


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG (entropy-coded data stuffs every 0xFF, so each FF DA is a marker)."""
    return data.count(b"\xff\xda")


def sniff(data: bytes) -> str | None:
    """PNG, JPEG or WEBP from the first bytes; None for anything else."""
    for name, magic in FORMATS.items():
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def from_base64(field: str, text: str) -> bytes:
    """The bytes of a base64 image field (a ``data:image/...;base64,`` prefix is allowed)."""
    raw = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field}: not valid base64 (send a PNG, JPEG or WebP image, base64-encoded)") from None


def open_image(field: str, data: bytes, *, max_bytes: int, max_pixels: int) -> Any:
    """A decoded PIL image of ``data`` within the bounds; InvalidRequest naming ``field`` otherwise."""
    from PIL import Image

    if not data:
        raise InvalidRequest(f"{field}: empty; send a PNG, JPEG or WebP image")
    if len(data) > max_bytes:
        raise InvalidRequest(f"{field}: {len(data)} bytes, larger than {max_bytes} (limits.max_image_body_bytes)")
    kind = sniff(data)
    if kind is None:
        raise InvalidRequest(f"{field}: not a PNG, JPEG or WebP image (allowed formats: png, jpeg, webp)")
    if kind == "JPEG" and (scans := jpeg_scans(data)) > MAX_JPEG_SCANS:
        raise InvalidRequest(f"{field}: a JPEG of {scans} scans; at most {MAX_JPEG_SCANS} are decoded "
                             "(re-save it as a baseline or ordinary progressive JPEG)")
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
        width, height = image.size  # from the header: nothing decoded yet
    except Image.DecompressionBombError:  # PIL's own, coarser header check (Image.MAX_IMAGE_PIXELS)
        raise InvalidRequest(f"{field}: more than {max_pixels} pixels (limits.max_image_pixels)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder complaint means the bytes are not an image
        raise InvalidRequest(f"{field}: could not be read as {kind.lower()} ({type(exc).__name__})") from None
    if width < 1 or height < 1 or width * height > max_pixels:
        raise InvalidRequest(f"{field}: {width}x{height} pixels, more than {max_pixels} "
                             "(limits.max_image_pixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)  # animated images: the first frame only
            image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise InvalidRequest(f"{field}: could not be decoded as {kind.lower()} ({type(exc).__name__})") from None
    return image


def to_png_b64(image: Any, mode: str) -> str:
    """``image`` in ``mode`` ("RGB" or "L") as base64 PNG text (fast compression: it crosses a pipe once)."""
    out = io.BytesIO()
    image.convert(mode).save(out, format="PNG", compress_level=1)
    return base64.b64encode(out.getvalue()).decode("ascii")


def checked_png(config: AgentConfig, field: str, data: bytes, mode: str, *, invert: bool = False,
                alpha_mask: bool = False) -> tuple[str, tuple[int, int]]:
    """Client image bytes -> (base64 PNG in ``mode``, (width, height)), bounded by the config's limits.

    ``alpha_mask``: OpenAI's convention, where a mask's transparent pixels mark what to repaint;
    the result is zitops' (white repaints). ``invert`` swaps white and black (A1111's inpainting_mask_invert).
    """
    from PIL import ImageOps

    limits = config.limits
    image = open_image(field, data, max_bytes=limits.max_image_body_bytes, max_pixels=limits.max_image_pixels)
    if alpha_mask and image.mode in ("RGBA", "LA", "PA") or (alpha_mask and "transparency" in image.info):
        image = ImageOps.invert(image.convert("RGBA").getchannel("A"))
    if invert:
        image = ImageOps.invert(image.convert("L"))
    return to_png_b64(image, mode), image.size


def default_size(size: tuple[int, int], config: AgentConfig) -> tuple[int, int]:
    """An output size for an input image: its own, rounded down to multiples of 16, within the limits."""
    limits = config.limits

    def side(value: int) -> int:
        return max(limits.min_side, min(limits.max_side, value - value % 16))

    width, height = size
    scale = min(1.0, limits.max_side / max(width, height))
    return side(int(width * scale)), side(int(height * scale))
