"""img2img and inpaint on the worker's loaded pipeline: the input images, and pipelines that share its modules.

``ZImageImg2ImgPipeline`` and ``ZImageInpaintPipeline`` are built once per
engine from ``pipe.components``: the same transformer, VAE and text encoder
objects, so there is no second copy of the weights. The instance-level
levers zitops put on the text-to-image pipeline (short text padding, the
text encoder's CUDA graphs) are carried over. A1111's inpaint options are
done here around the pipeline call: mask blur, "fill" (the masked area
pre-filled from its blurred surroundings), "only masked" (``inpaint_full_res``:
the mask's box cut out, inpainted at the full size, pasted back), and the
final paste of the original outside the (blurred) mask.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from zitops.engine.request import GenerationRequest

VARIANT_CLASSES = {"img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"}
INSTANCE_LEVERS = ("_encode_prompt", "_zitops_text_runner")
"""Attributes :mod:`zitops.engine.precision.accel` sets on the pipeline instance, shared with its variants."""


def variant_pipeline(pipe: Any, kind: str, cache: dict[str, Any]) -> Any:
    """The ``kind`` ("img2img" or "inpaint") pipeline over ``pipe``'s own modules, built once."""
    found = cache.get(kind)
    if found is None:
        import diffusers

        found = getattr(diffusers, VARIANT_CLASSES[kind])(**pipe.components)
        for attr in INSTANCE_LEVERS:
            if attr in vars(pipe):
                setattr(found, attr, getattr(pipe, attr))
        found.set_progress_bar_config(disable=True)
        cache[kind] = found
    found.scheduler = pipe.scheduler  # the request's sampler, set on the main pipeline
    return found


def decode_png(data: str) -> Any:
    """A base64 image the agent already checked and re-encoded (zitops.agent.http.image_input) as PIL."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


@dataclass
class Prepared:
    """What the pipeline gets, and what :func:`finish` needs to put its output back."""

    kwargs: dict[str, Any]
    original: Any = None  # the init image at the request's size
    mask: Any = None  # the blurred mask at that size (white: repaint)
    box: tuple[int, int, int, int] | None = None  # the "only masked" crop


def _crop_box(mask: Any, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The mask's bounding box plus padding, widened to the output's aspect ratio, within the image."""
    box = mask.getbbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box[0] - padding, box[1] - padding, box[2] + padding, box[3] + padding
    w, h = x1 - x0, y1 - y0
    # Widen the short side so the crop, resized to width x height, is not distorted.
    if w / h < width / height:
        grow = round(h * width / height) - w
        x0, x1 = x0 - grow // 2, x1 + grow - grow // 2
    else:
        grow = round(w * height / width) - h
        y0, y1 = y0 - grow // 2, y1 + grow - grow // 2
    shift_x = max(0, -x0) - max(0, x1 - width)
    shift_y = max(0, -y0) - max(0, y1 - height)
    x0, x1, y0, y1 = x0 + shift_x, x1 + shift_x, y0 + shift_y, y1 + shift_y
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def prepare(request: GenerationRequest) -> Prepared:
    """The pipeline's image inputs for an img2img or inpaint request."""
    from PIL import Image, ImageFilter

    assert request.init_image is not None
    size = (request.width, request.height)
    init = decode_png(request.init_image).convert("RGB")
    if init.size != size:
        init = init.resize(size, Image.Resampling.LANCZOS)
    if request.mask is None:
        return Prepared({"image": init, "strength": request.strength})
    mask = decode_png(request.mask).convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    soft = mask.filter(ImageFilter.GaussianBlur(request.mask_blur)) if request.mask_blur else mask
    source = init
    if request.inpaint_fill == "fill":
        # A1111's "fill": the masked area starts from its surroundings' colours, not its old content.
        source = Image.composite(init.filter(ImageFilter.GaussianBlur(max(size) / 8)), init, mask)
    box = _crop_box(mask, request.inpaint_padding, *size) if request.inpaint_full_res else None
    pipe_image, pipe_mask = source, soft
    if box is not None:
        pipe_image = source.crop(box).resize(size, Image.Resampling.LANCZOS)
        pipe_mask = soft.crop(box).resize(size, Image.Resampling.LANCZOS)
    return Prepared({"image": pipe_image, "mask_image": pipe_mask, "strength": request.strength},
                    original=init, mask=soft, box=box)


def finish(prepared: Prepared, images: list[Any]) -> list[Any]:
    """Inpaint outputs pasted over the original through the blurred mask (img2img outputs unchanged)."""
    from PIL import Image

    if prepared.mask is None:
        return images
    done = []
    for image in images:
        canvas = prepared.original.copy()
        if prepared.box is not None:
            x0, y0, x1, y1 = prepared.box
            patch = image.convert("RGB").resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
            canvas.paste(patch, (x0, y0), prepared.mask.crop(prepared.box))
        else:
            canvas = Image.composite(image.convert("RGB"), canvas, prepared.mask)
        done.append(canvas)
    return done
