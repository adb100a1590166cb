"""The agent's config file (``config.yaml``), as rendered by ``zitops deploy``.

It embeds the fully resolved profile, so an agent never depends on the file
the profile came from. Validated by pydantic at the edge; frozen inside.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zitops.errors import ConfigError
from zitops.profile import Profile


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Section):
    """Every runtime path. ``deploy`` fills them under --out or FHS paths."""

    state_dir: str
    log_dir: str
    output_dir: str
    cache_dir: str

    def as_paths(self) -> dict[str, Path]:
        """The four directories as Path objects."""
        return {k: Path(v) for k, v in self.model_dump().items()}


class AuthSettings(_Section):
    """Bearer tokens come from a secret file, never from this config."""

    tokens_file: str | None = None
    behind_proxy: bool = False


class FaultSettings(_Section):
    """The fault-injecting engine's plan (see zitops.engine.faulty).

    ``inner`` picks what makes the pixels: ``synthetic`` (seeded noise, fast,
    for drills and queue tests) or ``diffusers`` (the real tiny pipeline).
    """

    inner: Literal["synthetic", "diffusers"] = "synthetic"
    # What synthetic pixels look like: smooth blobs (compress well) or full-resolution
    # noise, the worst case for PNG, like a random-weight model's output (issue 7 bench).
    pixels: Literal["blobs", "noise"] = "blobs"
    leak_mib_per_job: float = Field(0.0, ge=0)
    crash_on_job: int | None = Field(None, ge=1)
    hang_on_job: int | None = Field(None, ge=1)
    oom_above_batch: int | None = Field(None, ge=0)
    raise_on_job: int | None = Field(None, ge=1)
    job_seconds: float = Field(0.05, ge=0, le=600)
    simulated_total_mib: float = Field(16384.0, gt=0)
    baseline_mib: float = Field(2048.0, ge=0)
    setup_seconds: float = Field(0.0, ge=0, le=600)  # simulated model load, every incarnation
    fail_setup_incarnation: int | None = Field(None, ge=0)  # setup raises in exactly this incarnation
    # Faults fire only in the first worker incarnation unless this is true, so
    # a drill can show recovery instead of an endless crash loop.
    every_incarnation: bool = False


class EngineSelection(_Section):
    """Which engine the workers run. ``faulty`` must be named explicitly."""

    kind: Literal["diffusers", "faulty"] = "diffusers"
    faults: FaultSettings = FaultSettings()


class Limits(_Section):
    """Request limits enforced before any expensive work."""

    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_prompt_chars: int = Field(2000, ge=1)
    max_side: int = Field(2048, ge=64, multiple_of=16)
    min_side: int = Field(64, ge=16, multiple_of=16)
    max_steps: int = Field(50, ge=1)
    max_images: int = Field(8, ge=1)


class AgentConfig(_Section):
    """Everything ``zitops agent`` needs, in one validated object."""

    profile: Profile
    model: str = "tiny"
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    gpus: list[int] | Literal["auto"] = "auto"
    paths: Paths
    auth: AuthSettings = AuthSettings()
    engine: EngineSelection = EngineSelection()
    limits: Limits = Limits()
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("must be a hostname or IP address without spaces")
        return v

    @property
    def is_loopback(self) -> bool:
        """True when the agent binds only to this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _format(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return f"{source}: {key}: {msg}"


def config_from_mapping(data: dict[str, Any], source: str = "config") -> AgentConfig:
    """Validate a mapping into an AgentConfig, with a one-line error."""
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(source, exc)) from None


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate ``config.yaml``."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{p}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the config must be a YAML mapping")
    return config_from_mapping(data, str(p))


def config_to_dict(config: AgentConfig) -> dict[str, Any]:
    """A plain mapping, in schema order, for writing YAML."""
    return config.model_dump(mode="json")
