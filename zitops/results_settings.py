"""``webhooks`` and ``images``: where a succeeded job's results go besides this host's disk.

Their own module so the agent's config schema stays within its size;
validated by pydantic with ``extra="forbid"``, frozen, like every config
section. Torch-free; imports nothing of zitops.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HOST_ENTRY = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
                        r"|\[?[0-9a-f:.]+\]?)")
"""A host name, an IP address or ``*.domain``: the entries of ``server.allowed_hosts`` and ``webhooks.allowed_hosts``."""


def comma_list(v: Any) -> Any:
    """A list setting as given; one string (``--set server.allowed_hosts=a.example,b.example``) split at commas."""
    if isinstance(v, str):
        return [part for part in (p.strip() for p in v.split(",")) if part]
    return v


class WebhookSettings(BaseModel):
    """Signed job callbacks (Standard Webhooks, docs/api.md "Webhooks"); off without ``secret_file``.

    ``allowed_hosts`` is the SSRF guard: a job's ``webhook`` must name one of
    these hosts ("hooks.example.com", "*.example.com", an IP address), over
    https. An entry written as an origin, "http://HOST:PORT", also allows plain
    http to exactly that host and port (a receiver on the same host or network).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_file: str | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    max_attempts: int = Field(8, ge=1, le=100)
    timeout_s: float = Field(10.0, gt=0, le=120)
    # Retry n waits backoff_s * 2^(n-1), at most backoff_max_s, times a random 0.5..1 (jitter).
    backoff_s: float = Field(5.0, gt=0, le=3_600)
    backoff_max_s: float = Field(600.0, gt=0, le=86_400)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        v = comma_list(v)
        if isinstance(v, list):
            out = []
            for item in v:
                entry = item.strip().lower() if isinstance(item, str) else ""
                host = entry
                if entry.startswith("http://"):
                    parts = urlsplit(entry)
                    if parts.path not in ("", "/") or parts.query or parts.username or parts.port is None:
                        raise ValueError(f"{entry[:60]!r}: an http entry is an origin with a port, "
                                         "http://HOST:PORT")
                    host = parts.hostname or ""
                if not host or host == "*" or not HOST_ENTRY.fullmatch(host):
                    raise ValueError(f"{str(item)[:60]!r} is not a host name, an IP address, '*.domain' "
                                     "or http://HOST:PORT")
                out.append(entry if entry.startswith("http://") else host.strip("[]"))
            return out
        return v

    @property
    def enabled(self) -> bool:
        """True when jobs may carry a webhook (a secret is configured)."""
        return self.secret_file is not None


class ImageSettings(BaseModel):
    """Where succeeded jobs' images go besides this host's disk: an S3-compatible bucket (docs/api.md).

    The credentials are never here: ``s3_credentials_file`` names an AWS
    shared-credentials file (mode 600 or 640, like the tokens file).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None  # s3://BUCKET[/PREFIX]; None: images stay on this host (or the fleet's store)
    s3_endpoint: str | None = None  # None: AWS's own endpoint for s3_region
    s3_credentials_file: str | None = None
    s3_profile: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    s3_region: str = Field("us-east-1", min_length=1, max_length=32, pattern=r"^[a-z0-9-]+$")
    # Presigned URLs (OpenAI response_format "url", native image links) stay valid this long (SigV4: at most 7 days).
    url_ttl_s: int = Field(3600, ge=1, le=604_800)
    check_interval_s: float = Field(5.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme != "s3" or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc or ""):
            raise ValueError("use s3://BUCKET or s3://BUCKET/PREFIX (a bucket name: 3-63 of a-z 0-9 . -)")
        if parts.query or parts.fragment or "//" in parts.path or ".." in parts.path.split("/"):
            raise ValueError("the prefix must be plain path segments (no ?, #, // or ..)")
        return v

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname
                              or urlsplit(v).username is not None):
            raise ValueError("use http(s)://HOST[:PORT] without a user or password")
        return v

    @model_validator(mode="after")
    def _needs_url(self) -> ImageSettings:
        if self.url is None and (self.s3_endpoint is not None or self.s3_credentials_file is not None):
            raise ValueError("s3_endpoint and s3_credentials_file need url: s3://BUCKET[/PREFIX]")
        return self

    @property
    def bucket(self) -> str:
        """The bucket of ``url``."""
        return urlsplit(self.url or "").netloc

    @property
    def prefix(self) -> str:
        """The key prefix of ``url`` ("" or "a/b", no slashes at the ends)."""
        return urlsplit(self.url or "").path.strip("/")
