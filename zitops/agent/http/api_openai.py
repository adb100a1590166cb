"""OpenAI Images compatible: ``POST /v1/images/generations``, synchronous.

The official ``openai`` client works unchanged. Fields that only steer
OpenAI's own models (model, quality, style, user, moderation, ...) are
accepted and ignored at neutral values; a value that asks for something
zitops cannot do (transparency, gif/svg) gets a 422 naming the field, in
OpenAI's error shape. ``stream: true`` answers with Server-Sent Events
(``image_generation.partial_image`` from previews, then
``image_generation.completed``), as OpenAI's Images API streams.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import Field, field_validator

from zitops.agent.contract import JobRecord
from zitops.agent.http.api_common import (
    ApiContext,
    abandon,
    base_url,
    build_request_as,
    context,
    discard_files,
    drop_encoded,
    images_json,
    inline_delivery,
    json_fragments,
    request_started,
    submit,
    sync_timeout_s,
    timed_json,
    wait_final,
)
from zitops.agent.http.api_events import openai_stream, partial_steps
from zitops.agent.http.api_inputs import LoraIn, lora_overrides
from zitops.agent.http.http_errors import ERROR_RESPONSES, responses
from zitops.agent.http.json_guard import (
    IMAGES_CAP,
    NAME_CAP,
    PROMPT_CAP,
    PROMPT_PATTERN,
    SEED_CAP,
    STEPS_CAP,
    TEXT_PATTERN,
    Body,
    Flag,
    no_bool_for_int,
    only,
)
from zitops.errors import InvalidRequest

router = APIRouter(tags=["openai"], responses={**ERROR_RESPONSES, **responses(409, 500, 507)})

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImageGenerationIn(Body):
    """OpenAI's image generation request, plus zitops extras (seed, negative_prompt, steps)."""

    prompt: str = Field(min_length=1, max_length=PROMPT_CAP, pattern=PROMPT_PATTERN)
    n: int = Field(1, ge=1, le=IMAGES_CAP,
                   description="Number of images, 1..limits.max_images (OpenAI's default 1, not the profile's batch).")
    size: str | None = Field(None, max_length=16,
                             description="WIDTHxHEIGHT, sides multiples of 16 within limits, or 'auto'.")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="b64_json (default) or url (a link to the native image endpoint).")
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] | None = Field(
        None, json_schema_extra=only("png", "jpeg", "webp", None))
    # zitops extras, sent by the openai client through extra_body.
    seed: int | None = Field(None, ge=-1, le=SEED_CAP)
    negative_prompt: str | None = Field(None, max_length=PROMPT_CAP, pattern=TEXT_PATTERN)
    steps: int | None = Field(None, ge=1, le=STEPS_CAP)
    # Accepted and ignored: they steer OpenAI's models, not this one.
    model: str | None = Field(None, max_length=NAME_CAP)
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = Field(None, max_length=1000)
    safety_identifier: str | None = Field(None, max_length=1000)
    moderation: Literal["low", "auto"] | None = None
    complexity: Literal["low", "medium", "high"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    frame_duration_ms: int | None = Field(None, ge=0, le=60_000)
    # Accepted only at neutral values.
    background: Literal["transparent", "opaque", "auto"] | None = Field(
        None, json_schema_extra=only("opaque", "auto", None))
    partial_images: int | None = Field(None, ge=0, le=3,
                                       description="With stream: previews sent as partial_image events (0..3).")
    stream: Flag | None = Field(None, description="Server-Sent Events: partial images, then completed.")
    loras: list[LoraIn] = Field(default_factory=list, max_length=8,
                                description="LoRAs from the LoRA directory (GET /sdapi/v1/loras), with weights.")
    # OpenAI's integers: pydantic would take true/false as 1/0, which the schema does not allow.
    # (A1111's body keeps that leniency: its clients send booleans for some integer fields.)
    @field_validator("n", "seed", "steps", "output_compression", "frame_duration_ms", "partial_images",
                     "frame_count", mode="before")
    @classmethod
    def _integers(cls, value: Any) -> Any:
        return no_bool_for_int(value)
    frame_count: int | None = Field(None, ge=0, le=1000, json_schema_extra=only(1, None))
    svg: Any = Field(None, json_schema_extra=only(None, "", {}))


def _unsupported(body: ImageGenerationIn) -> None:
    checks: list[tuple[str, bool, str]] = [
        ("background", body.background == "transparent", "transparent backgrounds are not supported; use auto or opaque"),
        ("partial_images", bool(body.partial_images) and not body.stream, "partial images need stream: true"),
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
    m = _SIZE.fullmatch(size)
    if not m:
        raise InvalidRequest(f"size: {size[:40]!r} is not WIDTHxHEIGHT (e.g. 1024x1024) or 'auto'")
    return int(m.group(1)), int(m.group(2))


ROUTE = "/v1/images/generations"
STREAM_QUALITY = {q: q for q in ("low", "medium", "high", "xhigh", "max", "auto")}
"""The qualities a stream event may name (OpenAI's ImageGen events); others are reported as auto."""

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "OpenAI's ImagesResponse: created, data[] (b64_json or url, revised_prompt), "
                         "output_format, size. Header Server-Timing: the request's stages (docs/api.md).",
          "content": {"application/json": {}, "text/event-stream": {
              "schema": {"type": "object", "description": "with stream: true, Server-Sent Events: "
                         "image_generation.partial_image, then image_generation.completed",
                         "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}}},
}


@router.post(ROUTE, response_class=Response, responses=_RESPONSES)
async def create_images(body: ImageGenerationIn, request: Request) -> Response:
    """Generate ``n`` images and wait for them; returns OpenAI's ImagesResponse."""
    started = request_started(request)
    ctx = context(request)
    _unsupported(body)
    width, height = parse_size(body.size)
    overrides: dict[str, Any] = {
        "width": width, "height": height, "batch": body.n, "seed": body.seed,
        "negative_prompt": body.negative_prompt, "steps": body.steps,
        "output_format": body.output_format or "png",
    }
    overrides.update(lora_overrides(ctx.config, [(lo.name, lo.weight) for lo in body.loras]))
    names = {"batch": "n", "width": "size", "height": "size"}
    req = build_request_as(names, ctx.config, body.prompt, **overrides)
    if body.stream:
        req = replace(req, preview_at=partial_steps(req.steps, body.partial_images or 0))
        record = await submit(request, req)
        return openai_stream(ctx.service, record, prefix="image_generation", quality=STREAM_QUALITY.get(body.quality or "auto", "auto"),
                             background=body.background or "auto", gone=lambda: abandon(ctx, record.id))
    record = await submit(request, req)
    with inline_delivery(ctx.service, record, body.response_format != "url"):
        record = await wait_final(ctx.service, record, sync_timeout_s(ctx.config), request)
        revised = b',"revised_prompt":' + json.dumps(record.request.prompt, ensure_ascii=False).encode("utf-8")
        return await openai_answer(ctx, request, record, started, ROUTE, body.response_format, revised)


async def openai_answer(ctx: ApiContext, request: Request, record: JobRecord, started: float, route: str,
                        response_format: str | None, extra: bytes = b"") -> Response:
    """OpenAI's ImagesResponse for a finished job: its images' URLs, or their base64 (``extra``: more
    fields of each item, as JSON after a comma)."""
    respond_from = time.monotonic()
    rest = {"created": int(record.finished_at or time.time()), "output_format": record.request.output_format,
            "size": f"{record.request.width}x{record.request.height}"}
    if response_format == "url":
        root = base_url(request)
        links = ctx.service.image_links(record) or [f"{root}/v1/jobs/{record.id}/images/{i}"
                                                     for i in range(len(record.images))]
        urls = [json.dumps(link).encode() for link in links]
        drop_encoded(ctx.service, record)
        payload = json_fragments("data", [[b'{"url":', url, extra, b"}"] for url in urls], rest)
    else:
        payload = await images_json(ctx.service, record, "data",
                                    lambda b64: [b'{"b64_json":"', b64, b'"', extra, b"}"], rest)
        discard_files(ctx.service, record)  # the response carries them; "url" responses keep the files
    return timed_json(ctx, route, record, payload, started, respond_from)
