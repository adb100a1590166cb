"""The agent's config file (``config.yaml``), as rendered by ``zitops deploy``.

It embeds the fully resolved profile, so an agent never depends on the file
the profile came from. Validated by pydantic at the edge; frozen inside.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zitops.errors import ConfigError
from zitops.profile import Profile
from zitops.results_settings import HOST_ENTRY, ImageSettings, WebhookSettings, comma_list


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Section):
    """Every runtime path. ``deploy`` fills them under --out or FHS paths."""

    state_dir: str
    log_dir: str
    output_dir: str
    cache_dir: str
    # Compile bundles shared by a fleet (a volume every agent mounts; docs/runtime.md "Compile once per
    # fleet"): `zitops warm` writes the bundle for its key here, every worker loads it. None: <cache_dir>/bundles.
    compile_bundle_dir: str | None = None

    def as_paths(self) -> dict[str, Path]:
        """The directories that are set, as Path objects."""
        return {k: Path(v) for k, v in self.model_dump().items() if v is not None}


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
    # simulated: the leak is a number in memory(); real: each job keeps a real tensor of
    # leak_mib_per_job on the engine's device, which torch's allocator and NVML both see
    # (zitops.engine.leak; `zitops drill leak --real`). A drill setting only.
    leak_memory: Literal["simulated", "real"] = "simulated"
    # Jobs before this one do not leak, so a drill can read a warm baseline (a worker that has run a job).
    leak_from_job: int = Field(1, ge=1)
    crash_on_job: int | None = Field(None, ge=1)
    hang_on_job: int | None = Field(None, ge=1)
    # The hang sits in native code holding the GIL, as a stuck CUDA call or C extension does: the worker's
    # heartbeat thread stops too, and nothing in the worker notices that its agent is gone.
    hang_holds_gil: bool = False
    oom_above_batch: int | None = Field(None, ge=0)
    raise_on_job: int | None = Field(None, ge=1)
    job_seconds: float = Field(0.05, ge=0, le=600)  # synthetic: each job's length; inner: the least a job takes
    simulated_total_mib: float = Field(16384.0, gt=0)
    baseline_mib: float = Field(2048.0, ge=0)
    setup_seconds: float = Field(0.0, ge=0, le=600)  # simulated model load, every incarnation
    fail_setup_incarnation: int | None = Field(None, ge=0)  # setup raises in exactly this incarnation
    hang_in_setup: int | None = Field(None, ge=0)  # setup hangs forever in exactly this incarnation
    # Faults fire only in the first worker incarnation unless this is true, so
    # a drill can show recovery instead of an endless crash loop.
    every_incarnation: bool = False


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an origin or URL, lowercased; None when it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class ServerSettings(_Section):
    """The HTTP server's own limits: Host names, client deadlines, connection caps (docs/api.md)."""

    # Host header names accepted besides loopback names and ``host``
    # (DNS rebinding guard); "*.example.com" matches subdomains, "*" anything.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Addresses (or networks) of reverse proxies whose X-Forwarded-Proto/-For are believed
    # (uvicorn's forwarded_allow_ips); empty: nobody's, so a client cannot make URLs https.
    forwarded_allow_ips: list[str] = Field(default_factory=list)
    # Origins (scheme://host[:port]) of other sites whose pages may send state-changing
    # requests (POST, DELETE...); the agent's own origin always may. Others get a 403.
    allowed_origins: list[str] = Field(default_factory=list)
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    body_timeout_s: float = Field(60.0, gt=0, le=3_600)
    keep_alive_s: float = Field(5.0, gt=0, le=600)
    limit_concurrency: int = Field(2048, ge=16, le=1_000_000)
    backlog: int = Field(2048, ge=16, le=65_535)
    max_open_files: int = Field(65_536, ge=1_024, le=1_048_576)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        v = comma_list(v)
        if isinstance(v, list):
            out = []
            for item in v:
                if not isinstance(item, str) or not HOST_ENTRY.fullmatch(item.strip().lower()):
                    raise ValueError(f"{str(item)[:60]!r} is not a host name, an IP address, '*.domain' or '*'")
                out.append(item.strip().lower().strip("[]"))
            return out
        return v

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _proxies(cls, v: Any) -> Any:
        v = comma_list(v)
        if isinstance(v, list):
            for item in v:
                try:
                    ipaddress.ip_network(str(item), strict=False)
                except ValueError:
                    raise ValueError(f"{str(item)[:60]!r} is not an IP address or network (no '*': name "
                                     "the proxies)") from None
        return v

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, v: Any) -> Any:
        v = comma_list(v)
        if isinstance(v, list):
            out = []
            for item in v:
                seen = origin_of(str(item))
                if seen is None or str(item).strip().rstrip("/").lower() != seen:
                    raise ValueError(f"{str(item)[:60]!r} is not an origin: use scheme://host[:port], "
                                     "e.g. https://app.example.com")
                out.append(seen)
            return out
        return v

    @model_validator(mode="after")
    def _limits(self) -> ServerSettings:
        if self.limit_concurrency >= self.max_open_files:
            raise ValueError("limit_concurrency must stay below max_open_files (each connection is a file)")
        return self


class EngineSelection(_Section):
    """Which engine the workers run. ``faulty`` must be named explicitly."""

    kind: Literal["diffusers", "faulty"] = "diffusers"
    faults: FaultSettings = FaultSettings()


class Limits(_Section):
    """Request limits enforced before any expensive work."""

    max_body_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_prompt_chars: int = Field(2000, ge=1, le=100_000)
    max_side: int = Field(2048, ge=64, le=8192, multiple_of=16)
    min_side: int = Field(64, ge=16, le=8192, multiple_of=16)
    max_steps: int = Field(50, ge=1, le=1000)
    max_images: int = Field(8, ge=1, le=64)
    # Input images (img2img, inpaint, edits): the body of those routes, and each decoded image.
    max_image_body_bytes: int = Field(32 * 2**20, ge=1024, le=256 * 2**20)
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64, le=8192 * 8192)


class StoreSettings(_Section):
    """Where jobs are kept: ``sqlite`` (this agent's own file) or a shared PostgreSQL (docs/fleet.md).

    The password is never here: libpq's passfile, or ``password_file``. On
    Kubernetes the URL too comes from the store Secret (``url_file``).
    """

    url: str | None = None  # None or "sqlite": this agent's own SQLite file
    url_file: str | None = None
    password_file: str | None = None
    lease_s: float = Field(30.0, ge=3, le=3_600)
    # Unique in the fleet and stable across restarts; None: "<host name>:<port>".
    agent_id: str | None = Field(None, min_length=1, max_length=200)
    # Fleet-wide cap on waiting jobs; None: queue.depth x ready agents.
    fleet_depth: int | None = Field(None, ge=1, le=10_000_000)
    # Retention by total bytes of the fleet's stored images (besides queue.result_ttl_s).
    max_image_mib: int | None = Field(None, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or v == "sqlite":
            return v
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("use sqlite or postgresql://USER@HOST:PORT/DB")
        if (urlsplit(v).password is not None or "password=" in urlsplit(v).query):
            raise ValueError("contains a password; put it in store.password_file (--store-password-file) "
                             "and remove it from the URL")
        return v

    @model_validator(mode="after")
    def _one_url(self) -> StoreSettings:
        if self.url_file is not None and self.url not in (None, "sqlite"):
            raise ValueError("give the store URL once: url or url_file")
        return self

    @property
    def shared(self) -> bool:
        """True for the shared PostgreSQL store (fleet mode)."""
        return self.url not in (None, "sqlite") or self.url_file is not None


class TracingSettings(_Section):
    """OpenTelemetry traces (docs/observability.md): off unless this or the standard OTEL_* variables say so."""

    # An OTLP/HTTP collector's base URL (spans go to <endpoint>/v1/traces); None: the
    # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables decide, and without them tracing is off.
    endpoint: str | None = Field(None, min_length=1, max_length=2000, pattern=r"^https?://\S+$")
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
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    tracing: TracingSettings = TracingSettings()
    webhooks: WebhookSettings = WebhookSettings()
    images: ImageSettings = ImageSettings()
    log_format: Literal["auto", "json", "console"] = "auto"
    lora_dir: str | None = Field(None, description="Directory of LoRA *.safetensors files (docs/features.md); "
                                                   "None: no LoRAs.")
    controlnet_dir: str | None = Field(None, description="Directory of the Union ControlNet in diffusers format "
                                                         "(docs/features.md); None: ControlNet off.")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("must be a hostname or IP address without spaces")
        return v

    @model_validator(mode="after")
    def _parallel_fits(self) -> AgentConfig:
        degree = self.profile.engine.parallel.degree
        if degree > 1 and isinstance(self.gpus, list) and self.gpus and len(self.gpus) % degree:
            raise ValueError(f"profile.engine.parallel.degree {degree} needs the GPUs in groups of {degree}; "
                             f"gpus {self.gpus} has {len(self.gpus)} (give a multiple of {degree})")
        return self

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
