"""Profiles: the schema, the built-ins, ``extends:`` and ``--set`` overrides.

A profile is YAML data validated by pydantic at the edge (``extra="forbid"``)
and handed inward as a frozen model. Loading never imports torch.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zitops.errors import ProfileError
from zitops.parallel_settings import ParallelSettings
from zitops.watchdog_settings import WatchdogSettings

BUILTIN_PROFILES = ("ecommerce", "designer", "poster", "lowvram", "lowvram-12", "lowvram-8")
SAMPLERS = ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "lcm")
SCHEDULES = ("simple", "karras", "exponential")
MAX_EXTENDS_DEPTH = 8

Precision = Literal["bf16", "fp16", "fp32"]

FP8_KEEP_BF16 = (
    "transformer.all_x_embedder", "transformer.t_embedder", "transformer.cap_embedder",
    "transformer.all_final_layer", "transformer.layers.0", "transformer.layers.-1",
    "transformer.*.adaLN_modulation",
)
"""engine.fp8_keep_bf16's default: the embedders, the final layer, the first and last blocks (the
vLLM-Omni recipe for this model), and every block's adaLN modulation, whose scales and gates
multiply the whole block and which fp8 would not speed up (one row per image)."""

FP8_PATTERN = re.compile(r"(transformer|text_encoder)(\.[A-Za-z0-9_*?-]+)*|[*?][A-Za-z0-9_.*?-]*")
"""A keep-list entry: a component name and a dotted module path, or a glob."""
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Generation(_Section):
    """Defaults for each request; a request may override any of them."""

    width: int = Field(1024, ge=64, le=2048, multiple_of=16)
    height: int = Field(1024, ge=64, le=2048, multiple_of=16)
    steps: int = Field(8, ge=1, le=50)
    sampler: str = "euler"
    schedule: str = "simple"
    guidance: float = Field(0.0, ge=0.0, le=20.0)
    batch: int = Field(1, ge=1, le=16)
    negative_prompt: str = ""
    prompt_template: str = "{prompt}"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    # The cost budget (zitops/budget.py): a request's estimated seconds are
    # megapixels x steps x images x the sampler's forwards per step x this
    # constant, calibrated per profile from the bench (docs/benchmarks.md).
    seconds_per_megapixel_step: float = Field(0.1, gt=0, le=1_000)
    max_job_seconds: float = Field(120.0, gt=0, le=86_400)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"must be one of {', '.join(SAMPLERS)}")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if v not in SCHEDULES:
            raise ValueError(f"must be one of {', '.join(SCHEDULES)}")
        return v

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("must contain the placeholder {prompt}")
        return v


class EngineSettings(_Section):
    """How the worker loads and runs the pipeline."""

    precision: Precision = "bf16"
    vae_precision: Precision = "bf16"
    vae_decode: Literal["full", "tiled", "fast"] = "full"
    tiny_vae_path: str | None = None
    offload: Literal["none", "model", "sequential", "group", "text_encoder"] = "none"
    # offload "group" (zitops/engine/precision/offload.py): the transformer's and text
    # encoder's blocks in groups of this many, in pinned host memory; with the
    # stream, the next group is copied while the current one computes.
    # "text_encoder" streams only the text encoder that way (one block per
    # group); the transformer and the VAE stay resident (docs/benchmarks.md "Tiers").
    offload_group_blocks: int = Field(1, ge=1, le=64)
    offload_stream: bool = True
    # Pin host memory per copy instead of once up front: less host RAM, slower.
    offload_low_cpu_mem: bool = False
    compile: bool = False
    # Compile on a CPU device too (compile is for GPUs: on the CPU it costs more start-up than it
    # saves, but a CPU-only host can still share and load the fleet's compile bundle).
    compile_on_cpu: bool = False
    # The transformer's and text encoder's linears in float8 e4m3 with per-row
    # scales (zitops/engine/precision/fp8.py). true: fp8 GEMMs where the card has them
    # (compute capability 8.9+), weight-only elsewhere (pre-Ada GPUs, the CPU);
    # "weight_only": e4m3 storage, bf16 matmuls, everywhere; "auto": fp8 GEMMs
    # where the card has them, the profile's precision elsewhere (for speed, not
    # memory). Smaller and (with GEMMs) faster, but not bf16-exact:
    # `zitops bench --compare bf16` measures it.
    fp8: Literal["weight_only", "auto"] | bool = False
    # Layers fp8 leaves in the profile's precision (the quality guard): module
    # names "transformer.<path>" / "text_encoder.<path>", a name covering what is
    # under it, globs allowed, a negative index counting from the end of a list.
    fp8_keep_bf16: tuple[str, ...] = FP8_KEEP_BF16
    attention_backend: str | None = None
    max_batch: int = Field(4, ge=1, le=16)
    # Step previews (docs/features.md): "latent" is a fixed linear map from the 16 latent channels
    # to RGB (microseconds); "vae" decodes through the VAE (or the tiny VAE), sharper and slower.
    preview_decode: Literal["latent", "vae"] = "latent"
    # LoRA hot-swap (docs/features.md): above 0, single-LoRA requests share one adapter slot of this
    # rank whose weights are swapped in place, so a compiled transformer needs no recompile for a switch.
    lora_hotswap_rank: int = Field(0, ge=0, le=1024)
    # Generate before Ready so the first request does not pay compilation
    # (zitops/worker/warmup.py). auto: when the engine compiled on a GPU.
    warmup: Literal["auto"] | bool = "auto"
    # Context parallel (docs/parallel.md): one image's denoising spread over a group of GPUs,
    # one worker slot per group. degree 1: off.
    parallel: ParallelSettings = ParallelSettings()

    @field_validator("fp8_keep_bf16", mode="before")
    @classmethod
    def _keep_list(cls, v: Any) -> Any:
        # --set passes a scalar: accept "a,b,c" as the list.
        if isinstance(v, str):
            v = [part.strip() for part in v.split(",") if part.strip()]
        for pattern in v if isinstance(v, (list, tuple)) else ():
            if not isinstance(pattern, str) or not FP8_PATTERN.fullmatch(pattern):
                raise ValueError(f"{pattern!r} is not a layer name: use transformer.<path> or "
                                 "text_encoder.<path> (letters, digits, _ . - and the globs * ?), "
                                 "e.g. transformer.layers.0")
        return v


class QueueSettings(_Section):
    """Admission control and job lifetimes."""

    depth: int = Field(20, ge=1, le=10_000)
    job_timeout_s: float = Field(300.0, gt=0, le=86_400)
    result_ttl_s: float = Field(86_400.0, gt=0)
    drain_timeout_s: float = Field(60.0, gt=0, le=3_600)
    # With two or more bearer tokens, one token may hold at most this share
    # of ``depth`` waiting jobs (at least 1), so no tenant takes every slot.
    per_token_share: float = Field(0.5, gt=0, le=1)
    # Output images are kept for result_ttl_s and, together, at most this many
    # bytes: the retention round deletes the oldest files past it.
    max_output_bytes: int = Field(8 * 1024**3, ge=1024 * 1024)


DEFAULT_LOG_LEVELS: dict[str, LogLevel] = {
    "root": "WARNING",
    "zitops": "INFO",
    "diffusers": "ERROR",
    "transformers": "ERROR",
    "torch": "ERROR",
    "uvicorn.error": "WARNING",
    "apscheduler": "WARNING",
}


class LogSettings(_Section):
    """Per-logger tiers (NOTES.md 5.2) and file rotation."""

    levels: dict[str, LogLevel] = Field(default_factory=lambda: dict(DEFAULT_LOG_LEVELS))
    access_log: bool = True
    max_bytes: int = Field(10 * 1024 * 1024, ge=4096)
    backups: int = Field(5, ge=0, le=1_000)
    # Failure records (failures.jsonl, failures.sqlite3) older than this, or
    # beyond this many bytes (oldest first), are pruned.
    failures_max_age_s: float = Field(30 * 86_400.0, gt=0)
    failures_max_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)


class DiskSettings(_Section):
    """Size caps of the pod's scratch volumes (k8s emptyDir sizeLimit), in MiB."""

    state_mib: int = Field(20_480, ge=64)
    logs_mib: int = Field(2_048, ge=64)
    cache_mib: int = Field(20_480, ge=64)
    tmp_mib: int = Field(1_024, ge=64)
    # /dev/shm in a pod or a Compose container (a runtime's default is 64 MB): the workers' pixel files
    # pass through it (zitops.worker.pixel_shm), so a short one sends big jobs' pixels through the pipe.
    shm_mib: int = Field(256, ge=64)
    # New jobs are refused (507) while free space under the state or output
    # directory is below this floor, so a full disk never strands a job
    # half-written; 0 turns the check off (docs/runtime.md "Disk budget").
    min_free_mib: int = Field(512, ge=0, le=1_048_576)


class Profile(_Section):
    """A resolved profile: every field has a value, ``extends`` is gone."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    description: str = Field(min_length=1, max_length=400)
    generation: Generation = Generation()
    engine: EngineSettings = EngineSettings()
    queue: QueueSettings = QueueSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    logging: LogSettings = LogSettings()
    disk: DiskSettings = DiskSettings()

    @model_validator(mode="after")
    def _coherent(self) -> Profile:
        if self.generation.batch > self.engine.max_batch:
            raise ValueError(
                f"generation.batch ({self.generation.batch}) exceeds engine.max_batch "
                f"({self.engine.max_batch})"
            )
        if self.watchdog.restart_backoff_max_s < self.watchdog.restart_backoff_s:
            raise ValueError("watchdog.restart_backoff_max_s must be >= restart_backoff_s")
        return self

    @property
    def summary(self) -> str:
        """The first line of the description, for listings."""
        return self.description.strip().splitlines()[0]


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{extra}"


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "levels":
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            # Log tiers merge per logger, so a user file can change one tier.
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{source}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a YAML mapping, got {type(data).__name__}")
    return data


def _builtin_text(name: str) -> str:
    return resources.files("zitops.profiles").joinpath(f"{name}.yaml").read_text("utf-8")


def _raw(name_or_path: str, depth: int = 0) -> tuple[dict[str, Any], str]:
    """Return the merged raw mapping for a built-in name or a file path."""
    if depth > MAX_EXTENDS_DEPTH:
        raise ProfileError(f"{name_or_path}: 'extends' chain is deeper than {MAX_EXTENDS_DEPTH}")
    if name_or_path in BUILTIN_PROFILES:
        source = f"built-in profile {name_or_path}"
        data = _read_yaml(_builtin_text(name_or_path), source)
    else:
        path = Path(name_or_path)
        if not (path.suffix in (".yaml", ".yml") or path.exists()):
            raise ProfileError(
                f"unknown profile {name_or_path!r}: use one of {', '.join(BUILTIN_PROFILES)} "
                "or a path to a .yaml file"
            )
        source = str(path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ProfileError(f"{source}: cannot read profile: {exc.strerror}") from None
        data = _read_yaml(text, source)
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ProfileError(f"{source}: extends: must be a profile name or path")
        if parent not in BUILTIN_PROFILES and not Path(parent).is_absolute():
            # A relative parent path is relative to the file that names it.
            parent = str(Path(source).parent / parent)
        base, _ = _raw(parent, depth + 1)
        base.pop("name", None)
        base.pop("description", None)
        data = _deep_merge(base, data)
    return data, source


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` and parse the value as a YAML scalar."""
    if "=" not in item:
        raise ProfileError(f"--set {item!r}: expected KEY=VALUE, e.g. generation.steps=8")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ProfileError(f"--set {item!r}: empty key")
    if "\n" in text or "\x00" in text:
        raise ProfileError(f"--set {key}: value contains a newline or NUL, which is not allowed")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    stripped = text.strip()
    quoted = len(stripped) > 1 and stripped[0] == stripped[-1] and stripped[0] in "'\""
    if isinstance(value, (dict, list)) or (isinstance(value, str) and value != stripped and not quoted):
        # YAML would drop a " # ..." tail as a comment, or read "a: b" as a
        # mapping; every profile field is a scalar, so take the text as typed.
        value = stripped
    return parts, value


def _apply_override(data: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ProfileError(f"--set {item}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def load_profile(name_or_path: str, overrides: tuple[str, ...] | list[str] = ()) -> Profile:
    """Resolve a built-in name or YAML file, apply ``--set`` overrides, validate."""
    data, source = _raw(name_or_path)
    data.setdefault("name", Path(name_or_path).stem if name_or_path not in BUILTIN_PROFILES else name_or_path)
    for item in overrides:
        parts, value = parse_override(item)
        _apply_override(data, parts, value, item)
    logging_section = data.get("logging")
    if isinstance(logging_section, dict) and isinstance(logging_section.get("levels"), dict):
        # A profile file (or --set) names only the tiers it changes; the rest keep their defaults.
        logging_section["levels"] = {**DEFAULT_LOG_LEVELS, **logging_section["levels"]}
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        where = source if not overrides else f"{source} (with --set {', '.join(overrides)})"
        raise ProfileError(_format_validation_error(where, exc)) from None


def profile_from_mapping(data: dict[str, Any], source: str) -> Profile:
    """Validate an already-resolved profile mapping (as embedded in config.yaml)."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation_error(source, exc)) from None


def list_builtin() -> list[Profile]:
    """All built-in profiles, resolved."""
    return [load_profile(name) for name in BUILTIN_PROFILES]


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """A plain mapping in schema order, suitable for YAML."""
    return profile.model_dump(mode="json")
