"""OpenAI Images compatible: ``POST /v1/images/generations``, synchronous.

The official ``openai`` client works unchanged. Fields that only steer
OpenAI's own models (model, quality, style, user, moderation, ...) are
accepted and ignored at neutral values; a value that asks for something
zitops cannot do (streaming, transparency, partial images, gif/svg) gets a
422 naming the field, in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from zitops.agent.api_common import (
    base_url,
    build_request_as,
    context,
    read_images,
    sync_timeout_s,
    wait_final,
)
from zitops.agent.http_errors import ERROR_RESPONSES
from zitops.errors import InvalidRequest

router = APIRouter(tags=["openai"], responses=ERROR_RESPONSES)

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImageGenerationIn(BaseModel):
    """OpenAI's image generation request, plus zitops extras (seed, negative_prompt, steps)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    n: int = Field(1, description="Number of images, 1..limits.max_images (OpenAI's default 1, not the profile's batch).")
    size: str | None = Field(None, description="WIDTHxHEIGHT, sides multiples of 16, or 'auto'.")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="b64_json (default) or url (a link to the native image endpoint).")
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] | None = None
    # zitops extras, sent by the openai client through extra_body.
    seed: int | None = Field(None, ge=-1)
    negative_prompt: str | None = None
    steps: int | None = None
    # Accepted and ignored: they steer OpenAI's models, not this one.
    model: str | None = None
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    moderation: Literal["low", "auto"] | None = None
    complexity: Literal["low", "medium", "high"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    frame_duration_ms: int | None = None
    # Accepted only at neutral values.
    background: Literal["transparent", "opaque", "auto"] | None = None
    partial_images: int | None = None
    stream: bool | None = None
    frame_count: int | None = None
    svg: Any = None


def _unsupported(body: ImageGenerationIn) -> None:
    checks: list[tuple[str, bool, str]] = [
        ("stream", bool(body.stream), "streaming is not supported; omit it or send false"),
        ("background", body.background == "transparent", "transparent backgrounds are not supported; use auto or opaque"),
        ("partial_images", bool(body.partial_images), "partial images are not supported; omit it or send 0"),
        ("frame_count", body.frame_count not in (None, 1), "only single images are supported; omit it or send 1"),
        ("svg", body.svg not in (None, {}, ""), "SVG output is not supported"),
        ("output_format", body.output_format in ("gif", "svg"), "allowed: png, jpeg, webp"),
    ]
    for name, bad, why in checks:
        if bad:
            raise InvalidRequest(f"{name}: {why}")


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """'1024x768' -> (1024, 768); None or 'auto' -> profile defaults."""
    if size is None or size == "auto":
        return None, None
    m = _SIZE.fullmatch(size.strip())
    if not m:
        raise InvalidRequest(f"size: {size[:40]!r} is not WIDTHxHEIGHT (e.g. 1024x1024) or 'auto'")
    return int(m.group(1)), int(m.group(2))


@router.post("/v1/images/generations")
async def create_images(body: ImageGenerationIn, request: Request) -> dict[str, Any]:
    """Generate ``n`` images and wait for them; returns OpenAI's ImagesResponse."""
    ctx = context(request)
    _unsupported(body)
    width, height = parse_size(body.size)
    overrides: dict[str, Any] = {
        "width": width, "height": height, "batch": body.n, "seed": body.seed,
        "negative_prompt": body.negative_prompt, "steps": body.steps,
        "output_format": body.output_format or "png",
    }
    names = {"batch": "n", "width": "size", "height": "size"}
    req = build_request_as(names, ctx.config, body.prompt, **overrides)
    record = await ctx.service.submit(req)
    record = await wait_final(ctx.service, record, sync_timeout_s(ctx.config), request)
    data: list[dict[str, Any]]
    if body.response_format == "url":
        root = base_url(request)
        data = [{"url": f"{root}/v1/jobs/{record.id}/images/{i}"} for i in range(len(record.images))]
    else:
        blobs = await read_images(ctx.service, record)
        encoded = await asyncio.to_thread(lambda: [base64.b64encode(b).decode("ascii") for b in blobs])
        data = [{"b64_json": e} for e in encoded]
    for item in data:
        item["revised_prompt"] = record.request.prompt
    return {"created": int(record.finished_at or time.time()), "data": data,
            "output_format": record.request.output_format,
            "size": f"{record.request.width}x{record.request.height}"}
