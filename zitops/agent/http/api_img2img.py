"""img2img and inpaint over HTTP: A1111's ``/sdapi/v1/img2img`` and OpenAI's ``/v1/images/edits``.

Both build the same request as text-to-image plus an input image (and an
optional mask), checked by :mod:`zitops.agent.http.image_input`; the worker runs
diffusers' ZImageImg2ImgPipeline or ZImageInpaintPipeline over its loaded
modules (:mod:`zitops.engine.features.img2img`). docs/features.md lists the fields.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import Field

from zitops.agent.http.api_a1111 import Txt2ImgIn, a1111_overrides, a1111_run
from zitops.agent.http.api_common import (
    abandon,
    build_request_as,
    context,
    inline_delivery,
    request_started,
    submit,
    sync_timeout_s,
    wait_final,
)
from zitops.agent.http.api_control import a1111_control
from zitops.agent.http.api_events import openai_stream, partial_steps
from zitops.agent.http.api_inputs import image_overrides, lora_overrides, sized
from zitops.agent.http.api_openai import STREAM_QUALITY, openai_answer, parse_size
from zitops.agent.http.http_errors import EDGE_CODES, ERROR_RESPONSES, responses
from zitops.agent.http.image_input import from_base64
from zitops.agent.http.json_guard import (
    IMAGES_CAP,
    PROMPT_CAP,
    SEED_CAP,
    STEPS_CAP,
    Flag,
    Num,
    only,
)
from zitops.errors import InvalidRequest

router = APIRouter(responses=responses(*EDGE_CODES))

IMG2IMG = "/sdapi/v1/img2img"
EDITS = "/v1/images/edits"
IMAGE_PATHS = frozenset({IMG2IMG, EDITS})
"""Routes whose bodies carry images: the edge gives them limits.max_image_body_bytes (as it does /v1/jobs,
whose native img2img, inpaint and control images ride in its JSON: api_native.JOBS)."""


class Img2ImgIn(Txt2ImgIn):
    """A1111's StableDiffusionImg2ImgProcessingAPI: txt2img's fields plus the input image and inpaint options."""

    init_images: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=IMAGES_CAP,
                                   description="One base64 PNG, JPEG or WebP image (a data: URL prefix is allowed).")
    mask: str | None = Field(None, description="Inpaint mask, base64; white repaints (see inpainting_mask_invert).")
    denoising_strength: Num | None = Field(0.75, gt=0, le=1, allow_inf_nan=False)
    resize_mode: int = Field(0, ge=0, le=3, json_schema_extra=only(0))
    image_cfg_scale: Num | None = Field(None, allow_inf_nan=False, description="Accepted and ignored (pix2pix only).")
    mask_blur: int | None = Field(None, ge=0, le=64)
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    mask_round: Flag = True
    inpainting_fill: int = Field(0, ge=0, le=3, json_schema_extra=only(0, 1),
                                 description="0 fill (from the surroundings), 1 original.")
    inpaint_full_res: Flag | int = Field(True, description="'Only masked': inpaint the mask's box at full size.")
    inpaint_full_res_padding: int = Field(32, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: Num | None = Field(None, allow_inf_nan=False, json_schema_extra=only(None, 1))
    latent_mask: str | None = Field(None, json_schema_extra=only(None, ""))
    include_init_images: Flag = Field(False, json_schema_extra=only(False))


def _refuse_img2img(body: Img2ImgIn) -> None:
    checks: list[tuple[str, bool, str]] = [
        ("init_images", len(body.init_images) > 1, "one input image per request; send batch_size for more outputs"),
        ("resize_mode", body.resize_mode != 0, "only 0 (just resize) is supported"),
        ("inpainting_fill", body.inpainting_fill > 1, "only 0 (fill) and 1 (original) are supported"),
        ("initial_noise_multiplier", body.initial_noise_multiplier not in (None, 1.0), "only 1 is supported"),
        ("latent_mask", bool(body.latent_mask), "a separate latent mask is not supported; send null"),
        ("include_init_images", body.include_init_images, "returning the input images is not supported"),
    ]
    for name, bad, why in checks:
        if bad:
            raise InvalidRequest(f"{name}: {why}")


@router.post(IMG2IMG, tags=["a1111"], response_class=Response,
             responses={200: {"description": "A1111's ImageToImageResponse: images (base64 PNG), parameters, info."},
                        **ERROR_RESPONSES, **responses(409, 500, 507)})
async def img2img(body: Img2ImgIn, request: Request) -> Response:
    """img2img, or inpaint when ``mask`` is given; synchronous, like txt2img."""
    ctx = context(request)
    _refuse_img2img(body)
    prompt, overrides = a1111_overrides(body, ctx.config)
    if a1111_control(body.alwayson_scripts) is not None:
        raise InvalidRequest("alwayson_scripts.controlnet: ControlNet works on text-to-image only "
                             "(/sdapi/v1/txt2img); send no enabled unit to img2img")
    init = from_base64("init_images", body.init_images[0])
    mask = from_base64("mask", body.mask) if body.mask else None
    images = await image_overrides(ctx.config, init, mask, names=("init_images", "mask"),
                                   invert=bool(body.inpainting_mask_invert), request=request)
    blur = body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y)
    overrides.update(sized({**overrides, **images}), strength=body.denoising_strength or 0.75, mask_blur=blur,
                     inpaint_fill="fill" if body.inpainting_fill == 0 else "original",
                     inpaint_full_res=bool(body.inpaint_full_res), inpaint_padding=body.inpaint_full_res_padding)
    return await a1111_run(body, request, prompt, overrides, IMG2IMG)


@router.post(EDITS, tags=["openai"], response_class=Response,
             responses={200: {"description": "OpenAI's ImagesResponse (b64_json), or with stream an SSE stream."},
                        **ERROR_RESPONSES, **responses(409, 500, 507)})
async def edits(
    request: Request,
    image: Annotated[list[UploadFile], File(description="The image to edit (PNG, JPEG or WebP); one.")],
    prompt: Annotated[str, Form(min_length=1, max_length=PROMPT_CAP)],
    mask: Annotated[UploadFile | None, File(description="Transparent pixels mark what to repaint.")] = None,
    n: Annotated[int, Form(ge=1, le=IMAGES_CAP)] = 1,
    size: Annotated[str | None, Form(max_length=16)] = None,
    response_format: Annotated[Literal["b64_json", "url"] | None, Form()] = None,
    output_format: Annotated[Literal["png", "jpeg", "webp"] | None, Form()] = None,
    seed: Annotated[int | None, Form(ge=-1, le=SEED_CAP)] = None,
    steps: Annotated[int | None, Form(ge=1, le=STEPS_CAP)] = None,
    strength: Annotated[float | None, Form(gt=0, le=1)] = None,
    loras: Annotated[str | None, Form(max_length=4000, description='JSON: [{"name": ..., "weight": ...}]')] = None,
    model: Annotated[str | None, Form(max_length=200)] = None,
    quality: Annotated[str | None, Form(max_length=20)] = None,
    user: Annotated[str | None, Form(max_length=1000)] = None,
    background: Annotated[Literal["opaque", "auto"] | None, Form()] = None,
    input_fidelity: Annotated[Literal["low", "high"] | None, Form()] = None,
    stream: Annotated[bool, Form(description="Server-Sent Events: partial images, then completed.")] = False,
    partial_images: Annotated[int | None, Form(ge=0, le=3, description="With stream: previews sent as "
                                                                        "image_edit.partial_image events.")] = None,
) -> Response:
    """Edit an image with a prompt (inpaint where ``mask`` is transparent); OpenAI's images.edit."""
    del model, user, input_fidelity  # OpenAI's own models' knobs
    started = request_started(request)
    ctx = context(request)
    if len(image) != 1:
        raise InvalidRequest(f"image: {len(image)} images sent; exactly one is supported")
    if partial_images and not stream:
        raise InvalidRequest("partial_images: partial images need stream: true")
    cap = ctx.config.limits.max_image_body_bytes
    init = await image[0].read(cap + 1)
    mask_bytes = await mask.read(cap + 1) if mask is not None else None
    overrides: dict[str, Any] = await image_overrides(ctx.config, init, mask_bytes, names=("image", "mask"),
                                                      alpha_mask=True, request=request)
    width, height = parse_size(size)
    overrides.update(width=width, height=height, batch=n, seed=seed, steps=steps,
                     output_format=output_format or "png", strength=strength if strength is not None else
                     (1.0 if mask_bytes is not None else 0.75), sampler="euler")
    if loras:
        overrides.update(lora_overrides(ctx.config, _loras_form(loras)))
    req = build_request_as({"batch": "n", "width": "size", "height": "size"}, ctx.config, prompt,
                           **sized(overrides))
    if stream:
        req = replace(req, preview_at=partial_steps(req.steps, partial_images or 0))
        record = await submit(request, req)
        return openai_stream(ctx.service, record, prefix="image_edit",
                             quality=STREAM_QUALITY.get(quality or "auto", "auto"), background=background or "auto", gone=lambda: abandon(ctx, record.id))
    record = await submit(request, req)
    with inline_delivery(ctx.service, record, response_format != "url"):
        record = await wait_final(ctx.service, record, sync_timeout_s(ctx.config), request)
        return await openai_answer(ctx, request, record, started, EDITS, response_format)


def _loras_form(text: str) -> list[tuple[str, float]]:
    """The ``loras`` form field: a JSON list of {"name", "weight"}."""
    try:
        items = json.loads(text)
        return [(str(item["name"]), float(item.get("weight", 1.0))) for item in items]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise InvalidRequest('loras: not a JSON list of {"name": ..., "weight": ...}') from None
