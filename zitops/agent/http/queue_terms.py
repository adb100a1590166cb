"""A job's place in the queue as the caller asks for it: priority, deadline (docs/api.md "Priorities"), and once per Idempotency-Key.

The native body carries ``priority`` and ``max_queue_s``; every route also
takes them as headers, for the OpenAI and A1111 bodies whose schemas are not
ours to change. The token's default priority comes from the tokens file.

``Idempotency-Key`` on submit: a retried request gets the job its first attempt made, never a second one.

The header Stripe uses and the IETF draft (draft-ietf-httpapi-idempotency-key-header)
names. A client that lost the answer to a submit (the job was stored, the reply
was not delivered) retries with the same key and gets the same job: 202 with the
same id on ``POST /v1/jobs``, and on the synchronous routes (OpenAI, A1111) the
same job's result, waited for as usual.

A key belongs to its caller (the token's tenant; one shared scope without tokens)
and names the job itself: the job's id is a digest of the scope and the key, so
the store's primary key makes "one job per key" hold across a fleet of agents and
concurrent retries, and the key expires with the job (``queue.result_ttl_s``, the
fleet's byte cap). The job keeps the key and a digest of the request body in
``request.extra["idempotency"]``: the same key with a different body is refused
with a 422 that names the header, since the retry is not the request the key made.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request

from zitops.agent.contract import DEFAULT_PRIORITY, JobRecord, Service
from zitops.agent.http.tenants import caller
from zitops.engine.request import GenerationRequest
from zitops.errors import InvalidRequest, NotFound

PRIORITY_HEADER = "x-zitops-priority"
DEADLINE_HEADER = "x-zitops-max-queue-s"
MAX_QUEUE_CAP_S = 86_400


def _header_int(request: Request, name: str, field_name: str, low: int, high: int) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{field_name} (header {name}): {raw[:20]!r} is not a whole number in {low}..{high}")
    return int(raw)


def queue_terms(request: Request, priority: int | None, max_queue_s: int | None) -> dict[str, int]:
    """The job's priority (asked for, else the token's default) and deadline, for ``request.extra``.

    A body field wins over its header. Only admin tokens (or everyone, on an
    agent without tokens) may ask for more than the token's default.
    """
    priorities: dict[str, int] = request.app.state.zitops.priorities
    who = caller(request)
    default = priorities.get(who.owner, DEFAULT_PRIORITY) if who.owner is not None else DEFAULT_PRIORITY
    asked = priority if priority is not None else _header_int(request, PRIORITY_HEADER, "priority", 0, 2)
    if asked is not None and asked > default and not who.admin:
        raise InvalidRequest(f"priority: {asked} is above this token's default ({default}); only admin tokens "
                             "may raise it (0 low, 1 normal, 2 high)")
    deadline = max_queue_s if max_queue_s is not None else _header_int(
        request, DEADLINE_HEADER, "max_queue_s", 1, MAX_QUEUE_CAP_S)
    return {"priority": default if asked is None else asked, **({"max_queue_s": deadline} if deadline else {})}


# --- Idempotency-Key ---------------------------------------------------------------

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY = 255
"""The longest key taken (Stripe's limit)."""
EXTRA = "idempotency"
"""The key of ``GenerationRequest.extra`` that holds the job's key and body digest."""


@dataclass(frozen=True)
class Idempotent:
    """One submit's key: the job id it names and the digest of the body it came with."""

    key: str
    job_id: str
    body_sha256: str

    @classmethod
    async def of(cls, request: Request, owner: str | None) -> Idempotent | None:
        """The request's key (None without the header); a 422 naming the header for a malformed one."""
        raw = request.headers.get(IDEMPOTENCY_HEADER)
        if raw is None:
            return None
        key = raw.strip()
        if len(key) >= 2 and key[0] == key[-1] == '"':  # the draft's quoted sf-string form
            key = key[1:-1]
        if not 1 <= len(key) <= MAX_KEY or not all(" " <= ch <= "~" for ch in key):
            raise InvalidRequest(f"{IDEMPOTENCY_HEADER}: give 1..{MAX_KEY} printable ASCII characters (a UUID is a good key)")
        scope = hashlib.sha256(f"{owner or ''}\0{key}".encode()).hexdigest()[:32]
        return cls(key, scope, await body_digest(request))

    def earlier(self, service: Service) -> JobRecord | None:
        """The job an earlier request with this key made (checked to be the same request), or None."""
        try:
            record = service.get(self.job_id)
        except NotFound:
            return None
        return self.same(record)

    def same(self, record: JobRecord) -> JobRecord:
        """``record`` if this key and body made it; a 422 naming the header otherwise."""
        made = record.request.extra.get(EXTRA)
        if not isinstance(made, dict) or made.get("body_sha256") != self.body_sha256:
            raise InvalidRequest(f"{IDEMPOTENCY_HEADER}: this key was used for a different request (job {record.id}); "
                                 "send a new key for a new request, or the same body to get that job")
        return record

    def mark(self, req: GenerationRequest) -> GenerationRequest:
        """``req`` carrying this key and the body's digest (stored with the job)."""
        return replace(req, extra={**req.extra, EXTRA: {"key": self.key, "body_sha256": self.body_sha256}})


def may_retry(record: JobRecord) -> bool:
    """True for a job made with an Idempotency-Key: a retry may ask for its images again, so they stay."""
    return EXTRA in record.request.extra


async def submit_once(request: Request, service: Service, req: GenerationRequest, owner: str | None,
                      owner_cap: int | None, admit: Callable[[], None] = lambda: None) -> JobRecord:
    """``service.submit``, or with an Idempotency-Key the job that key already made.

    ``admit`` (the cost check) raises for a new job only: a retry gets its job whatever the estimate is now.
    """
    key = await Idempotent.of(request, owner)
    if key is None:
        admit()
        return await service.submit(req, owner=owner, owner_cap=owner_cap)
    earlier = key.earlier(service)
    if earlier is not None:
        return earlier
    admit()
    # A concurrent retry may have stored the job meanwhile: the store returns that one.
    return key.same(await service.submit(key.mark(req), owner=owner, owner_cap=owner_cap, job_id=key.job_id))


async def body_digest(request: Request) -> str:
    """SHA-256 of the route and the body as the client meant it (JSON canonicalised; a form field by field)."""
    digest = hashlib.sha256(request.url.path.encode() + b"\0")
    try:
        raw = await request.body()
    except RuntimeError:  # a multipart form was parsed from the stream: digest its fields in order
        form = await request.form()
        for name, value in form.multi_items():
            data = value.encode() if isinstance(value, str) else await _file_bytes(value)
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return digest.hexdigest()
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        digest.update(raw)
    else:
        digest.update(json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


async def _file_bytes(upload: Any) -> bytes:
    await upload.seek(0)
    data: bytes = await upload.read()
    await upload.seek(0)
    return data
