"""What a worker is asked to do: a validated, frozen generation request.

torch-free, so the agent and the CLI can build and check requests.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from zitops.errors import InvalidRequest
from zitops.profile import SAMPLERS, SCHEDULES, Profile

OUTPUT_FORMATS = ("png", "jpeg", "webp")

INPUT_IMAGES = ("init_image", "mask", "control_image")
"""The request's base64 input images: megabytes each, kept in a stored job only until it is final."""

_SIZE_ONLY = re.compile(r"<\d+ base64 characters>")
"""An input image given as its size alone (base64 never holds ``<``)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One job: a prompt and everything needed to make its images.

    ``seeds`` holds one seed per image; the batch size is ``len(seeds)``, and
    image i equals the same request run alone with ``seeds[i]``.
    """

    prompt: str
    seeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    sampler: str = "euler"
    schedule: str = "simple"
    guidance: float = 0.0
    negative_prompt: str = ""
    output_format: str = "png"
    profile: str = "designer"
    preview: bool = False
    # img2img and inpaint (docs/features.md): PNG bytes in base64, already bounded and
    # re-encoded by the agent (zitops.agent.http.image_input), so the worker decodes trusted PNGs.
    init_image: str | None = None
    mask: str | None = None
    strength: float = 0.75
    mask_blur: int = 0
    inpaint_fill: str = "original"  # "original" or "fill" (A1111's inpainting_fill 1 and 0)
    inpaint_full_res: bool = False
    inpaint_padding: int = 0
    loras: tuple[tuple[str, float], ...] = ()
    # ControlNet (docs/features.md): a ready control map (base64 PNG, bounded like init images),
    # its kind (recorded; the Union ControlNet reads the map itself) and the conditioning scale.
    control_image: str | None = None
    control_type: str = "canny"
    control_strength: float = 0.75
    control_resize: str = "just"  # fitting the map to the output: "just" stretch, "crop", "fill" (pad)
    preview_at: tuple[int, ...] = ()  # steps (1-based) that send a preview; ``preview`` means every step
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def batch(self) -> int:
        """Number of images."""
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe mapping (seeds as a list)."""
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["loras"] = [list(pair) for pair in self.loras]
        d["preview_at"] = list(self.preview_at)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        d["seeds"] = tuple(int(s) for s in d["seeds"])
        d["loras"] = tuple((str(n), float(w)) for n, w in d.get("loras") or ())
        d["preview_at"] = tuple(int(s) for s in d.get("preview_at") or ())
        return cls(**d)

    def public_params(self) -> dict[str, Any]:
        """:meth:`to_dict` for API answers: input images as their size, not megabytes of base64.

        A finished job's stored request already holds the size alone (the job
        stores' final-state triggers write the same ``<N base64 characters>``).
        """
        d = self.to_dict()
        for key in INPUT_IMAGES:
            if d[key] is not None and not _SIZE_ONLY.fullmatch(d[key]):
                d[key] = f"<{len(d[key])} base64 characters>"
        return d

    @property
    def kind(self) -> str:
        """txt2img, img2img, inpaint or control (text-to-image with a ControlNet)."""
        if self.init_image is None:
            return "txt2img" if self.control_image is None else "control"
        return "inpaint" if self.mask is not None else "img2img"

    def wants_preview(self, step: int) -> bool:
        """Whether step ``step`` (1-based) sends a preview image with its progress."""
        return self.preview or step in self.preview_at

    def split(self, at: int) -> tuple[GenerationRequest, GenerationRequest]:
        """Two requests with the first ``at`` seeds and the rest."""
        from dataclasses import replace

        return replace(self, seeds=self.seeds[:at]), replace(self, seeds=self.seeds[at:])


MAX_SEED = 2**32 - 1
IMG2IMG_SAMPLERS = ("euler", "euler_a", "heun", "lcm")
"""Samplers whose scheduler can noise an input image (``scale_noise``), so img2img and inpaint work."""
MAX_LORAS = 8
INPAINT_FILLS = ("original", "fill")
CONTROL_TYPES = ("canny", "depth", "pose")
CONTROL_RESIZES = ("just", "crop", "fill")
MAX_CONTROL_STRENGTH = 2.0


def validate_request(req: GenerationRequest, *, max_side: int = 2048, min_side: int = 64,
                     max_steps: int = 50, max_images: int = 16,
                     max_prompt_chars: int = 2000) -> GenerationRequest:
    """Raise InvalidRequest with one clear line if ``req`` is not allowed."""
    if not req.prompt or not req.prompt.strip():
        raise InvalidRequest("prompt: must not be empty")
    if len(req.prompt) > max_prompt_chars:
        raise InvalidRequest(f"prompt: {len(req.prompt)} characters, at most {max_prompt_chars} allowed")
    if "\x00" in req.prompt or "\x00" in req.negative_prompt:
        raise InvalidRequest("prompt: contains a NUL character")
    for name, side in (("width", req.width), ("height", req.height)):
        if side % 16:
            raise InvalidRequest(f"{name}: {side} is not a multiple of 16 (Z-Image-Turbo needs sides in steps of 16)")
        if not min_side <= side <= max_side:
            raise InvalidRequest(f"{name}: {side} is out of range; allowed {min_side}..{max_side}, a multiple of 16")
    if not 1 <= req.steps <= max_steps:
        raise InvalidRequest(f"steps: {req.steps} is out of range; allowed 1..{max_steps}")
    if not 1 <= req.batch <= max_images:
        raise InvalidRequest(f"batch: {req.batch} images is out of range; allowed 1..{max_images}")
    for s in req.seeds:
        if not 0 <= s <= MAX_SEED:
            raise InvalidRequest(f"seed: {s} is out of range; allowed 0..{MAX_SEED} (or -1 for random)")
    if req.sampler not in SAMPLERS:
        raise InvalidRequest(f"sampler: unknown {req.sampler!r}; valid: {', '.join(SAMPLERS)}")
    if req.schedule not in SCHEDULES:
        raise InvalidRequest(f"schedule: unknown {req.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not 0.0 <= req.guidance <= 20.0:
        raise InvalidRequest(f"guidance: {req.guidance} is out of range; allowed 0..20")
    if req.output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(f"output_format: {req.output_format!r}; valid: {', '.join(OUTPUT_FORMATS)}")
    _validate_image_fields(req)
    _validate_control(req)
    if len(req.loras) > MAX_LORAS:
        raise InvalidRequest(f"loras: {len(req.loras)} asked for; at most {MAX_LORAS} per request")
    for name, weight in req.loras:
        if not -4.0 <= weight <= 4.0:
            raise InvalidRequest(f"loras: weight {weight} for {name!r} is out of range; allowed -4..4")
    return req


def _validate_image_fields(req: GenerationRequest) -> None:
    if req.mask is not None and req.init_image is None:
        raise InvalidRequest("mask: needs an input image (init_image) to inpaint")
    if req.init_image is None:
        return
    if req.sampler not in IMG2IMG_SAMPLERS:
        raise InvalidRequest(f"sampler: {req.sampler!r} cannot start from an image; "
                             f"for img2img and inpaint use {', '.join(IMG2IMG_SAMPLERS)}")
    if not 0.0 < req.strength <= 1.0:
        raise InvalidRequest(f"denoising_strength: {req.strength} is out of range; allowed above 0 up to 1")
    if int(req.steps * req.strength) < 1:
        raise InvalidRequest(f"denoising_strength: {req.strength} x {req.steps} steps leaves no step to run; "
                             f"raise either so their product is at least 1")
    if not 0 <= req.mask_blur <= 64:
        raise InvalidRequest(f"mask_blur: {req.mask_blur} is out of range; allowed 0..64")
    if not 0 <= req.inpaint_padding <= 256:
        raise InvalidRequest(f"inpaint_full_res_padding: {req.inpaint_padding} is out of range; allowed 0..256")
    if req.inpaint_fill not in INPAINT_FILLS:
        raise InvalidRequest(f"inpainting_fill: {req.inpaint_fill!r}; valid: {', '.join(INPAINT_FILLS)}")


def _validate_control(req: GenerationRequest) -> None:
    if req.control_image is None:
        return
    if req.init_image is not None:
        raise InvalidRequest("control: ControlNet works on text-to-image only; send no init_image/mask with it")
    if req.control_type not in CONTROL_TYPES:
        raise InvalidRequest(f"control.type: {req.control_type!r}; valid: {', '.join(CONTROL_TYPES)}")
    if req.control_resize not in CONTROL_RESIZES:
        raise InvalidRequest(f"control.resize: {req.control_resize!r}; valid: {', '.join(CONTROL_RESIZES)}")
    if not 0.0 <= req.control_strength <= MAX_CONTROL_STRENGTH:
        raise InvalidRequest(f"control.strength: {req.control_strength} is out of range; "
                             f"allowed 0..{MAX_CONTROL_STRENGTH:g}")


def request_from_profile(profile: Profile, prompt: str, **overrides: Any) -> GenerationRequest:
    """Fill a request from the profile's defaults, then apply overrides.

    ``seed`` (int, -1 for random) and ``batch`` expand into per-image seeds:
    seed, seed+1, ... as A1111 does.
    """
    import secrets

    g = profile.generation
    batch = int(overrides.pop("batch", None) or g.batch)
    seed = overrides.pop("seed", None)
    seeds = overrides.pop("seeds", None)
    if seeds is None:
        if seed is None or int(seed) < 0:
            seed = secrets.randbelow(MAX_SEED - 64)
        seeds = tuple(int(seed) + i for i in range(batch))
    templated = g.prompt_template.replace("{prompt}", prompt) if prompt.strip() else prompt
    fields: dict[str, Any] = dict(
        prompt=templated,
        seeds=tuple(seeds),
        width=g.width,
        height=g.height,
        steps=g.steps,
        sampler=g.sampler,
        schedule=g.schedule,
        guidance=g.guidance,
        negative_prompt=g.negative_prompt,
        output_format=g.output_format,
        profile=profile.name,
    )
    for k, v in overrides.items():
        if v is not None:
            fields[k] = v
    return GenerationRequest(**fields)
