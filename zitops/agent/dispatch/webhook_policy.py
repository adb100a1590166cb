"""Webhook rules as plain functions: which targets are allowed, how to sign, when to retry.

The Standard Webhooks spec (standardwebhooks.com): a message has an id
(``webhook-id``, the same on every retry), the attempt's Unix time
(``webhook-timestamp``) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``, keyed by the secret after its ``whsec_`` prefix,
base64-decoded. Nothing here does I/O; :mod:`zitops.agent.dispatch.webhooks` does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from zitops.errors import ConfigError, InvalidRequest

SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048
SETTING = "webhooks.allowed_hosts"


@dataclass(frozen=True)
class Target:
    """A webhook URL that passed the host rule, split for delivery."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    literal: bool  # the host is an IP address (so no name to resolve)


def parse_secret(text: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret file's text; ConfigError (never echoing it) otherwise."""
    value = text.strip()
    if not value.startswith(SECRET_PREFIX):
        raise ConfigError("webhooks.secret_file: the secret must start with whsec_ followed by base64 "
                          "(e.g. whsec_$(openssl rand -base64 32))")
    try:
        key = base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("webhooks.secret_file: the part after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ConfigError("webhooks.secret_file: the key must be 24 to 64 bytes (Standard Webhooks)")
    return key


def _host_listed(host: str, port: int, scheme: str, allowed: list[str]) -> bool:
    for entry in allowed:
        if entry.startswith("http://"):
            parts = urlsplit(entry)
            if parts.hostname == host and parts.port == port:
                return True  # an origin entry allows http and https to exactly this host and port
        elif scheme == "https" and (entry == host or (entry.startswith("*.") and host.endswith(entry[1:]))):
            return True
    return False


def check_target(url: str, allowed: list[str]) -> Target:
    """The target of a job's ``webhook``, or InvalidRequest (422) saying why, naming the setting."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"webhook: longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("webhook: not a URL; send https://HOST/PATH") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("https", "http") or not host:
        raise InvalidRequest("webhook: must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("webhook: must not carry a user name or password")
    if parts.fragment:
        raise InvalidRequest("webhook: must not carry a #fragment")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidRequest("webhook: contains spaces or control characters")
    port = port or (443 if scheme == "https" else 80)
    if not _host_listed(host, port, scheme, allowed):
        how = ("plain http needs an entry http://HOST:PORT" if scheme == "http" else "add the host to it")
        raise InvalidRequest(f"webhook: {host}:{port} over {scheme} is not allowed by {SETTING} "
                             f"({len(allowed)} entries); {how}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, literal=_is_ip(host))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def pinned_address(target: Target, addresses: list[str]) -> str:
    """The one address deliveries will use, from the name's resolved ``addresses``.

    A listed IP address is used as is. A listed *name* must resolve to a
    public address: a name that points inside (loopback, private, link-local)
    is refused, so a DNS record cannot steer deliveries to internal services;
    list the address itself to allow such a receiver.
    """
    if target.literal:
        return target.host
    if not addresses:
        raise InvalidRequest(f"webhook: {target.host} does not resolve")
    for address in addresses:
        if not ipaddress.ip_address(address).is_global:
            raise InvalidRequest(f"webhook: {target.host} resolves to {address}, not a public address; "
                                 f"{SETTING} must list the address itself to allow an internal receiver")
    return addresses[0]


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def backoff_s(attempts: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones; ``jitter`` is a random 0..1."""
    return min(cap_s, base_s * 2 ** max(0, attempts - 1)) * (0.5 + 0.5 * jitter)


def event_body(job: dict[str, Any], images: list[str]) -> bytes:
    """The JSON body for a job that ended: ``{type, timestamp, data: {id, status, error, images}}``.

    Built from the stored job alone, so every retry (by any agent) sends the same body.
    """
    import datetime

    finished = job.get("finished_at") or job.get("created_at") or 0.0
    stamp = datetime.datetime.fromtimestamp(float(finished), datetime.UTC).isoformat().replace("+00:00", "Z")
    data = {"id": job["id"], "status": job["status"], "error": job.get("error"), "images": images,
            "finished_at": finished}
    return json.dumps({"type": f"job.{job['status']}", "timestamp": stamp, "data": data},
                      separators=(",", ":"), sort_keys=True).encode()


def message_id(job_id: str) -> str:
    """The ``webhook-id`` of a job's message: stable, so receivers can drop duplicates."""
    return f"msg_{job_id}"
