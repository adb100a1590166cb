"""Webhook delivery: signed POSTs when jobs end, at least once, one attempt per job at a time.

:class:`Webhooks` runs one task on the agent's event loop. A job that ends
on this agent is offered at once (``wake``); a sweep finds final jobs that
ended while no agent listened (a restart, another agent of the fleet); due
retries are claimed from the ledger (:mod:`zitops.agent.storage.webhook_ledger`, or
the PostgreSQL one in fleet mode). Each attempt runs on a thread: a POST to
the address pinned at submit, with the job's host name for TLS and
``Host``, no redirects followed, within ``webhooks.timeout_s``. The rules
(what to sign, when to retry) are :mod:`zitops.agent.dispatch.webhook_policy`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from zitops.agent.dispatch.webhook_policy import (
    backoff_s,
    check_target,
    event_body,
    message_id,
    pinned_address,
    sign,
)
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.failure_log import FailureLog
from zitops.agent.storage.webhook_ledger import Delivery
from zitops.errors import InvalidRequest
from zitops.results_settings import WebhookSettings

POLL_S = 0.5
"""How often due retries are looked for."""
SWEEP_S = 10.0
"""How often final jobs without a delivery are looked for (a restart, another agent's jobs)."""
IN_FLIGHT = 8
"""Attempts at once, each on its own thread."""
CLAIM_MARGIN_S = 30.0
"""A claim outlives the attempt's timeout by this much before another loop may take the delivery up."""
ANSWER_BYTES = 64 * 1024
"""The most of a receiver's answer read (and ignored)."""


class Ledger(Protocol):
    """Where deliveries are kept: SQLite (one agent) or PostgreSQL (the fleet)."""

    def open(self, job_id: str, claim_s: float) -> Delivery | None:
        """Claim the first delivery of a final job with a webhook; None otherwise."""

    def sweep(self) -> int:
        """Open pending deliveries for final jobs that have none; how many."""

    def claim(self, claim_s: float, limit: int) -> list[Delivery]:
        """Claim due deliveries."""

    def settle(self, job_id: str, *, attempts: int, state: str, next_in_s: float,
               status: int | None, error: str | None) -> None:
        """Record an attempt's outcome."""

    def summary(self, limit: int = 10) -> dict[str, Any]:
        """Counts by state and the newest deliveries."""

    def close(self) -> None:
        """Release the ledger's connection."""


class Counter(Protocol):
    """A Prometheus counter with an ``outcome`` label."""

    def labels(self, outcome: str) -> Any:
        """The child counter of ``outcome``."""


def post(delivery: Delivery, headers: dict[str, str], body: bytes, timeout_s: float) -> tuple[int | None, str | None]:
    """One POST to the pinned address; (HTTP status, None) or (None, why it failed)."""
    import urllib3

    parts = urlsplit(delivery.url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    timeout = urllib3.Timeout(total=timeout_s)
    address = delivery.address or host
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(address, port, server_hostname=host, assert_hostname=host,
                                           cert_reqs="CERT_REQUIRED", timeout=timeout, retries=False, maxsize=1)
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1)
    try:
        answer = pool.urlopen("POST", path, body=body, redirect=False, retries=False, preload_content=False,
                              headers={**headers, "Host": host if default else f"{host}:{port}"})
        answer.read(ANSWER_BYTES)
        answer.release_conn()
        return answer.status, None
    except urllib3.exceptions.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    finally:
        pool.close()


class Webhooks:
    """The delivery loop (see the module docstring)."""

    def __init__(self, settings: WebhookSettings, key: bytes, ledger: Ledger, counter: Counter, log: AgentLog,
                 failures: FailureLog, links: Callable[[str, int], list[str]]) -> None:
        self.settings = settings
        self.ledger = ledger
        self.counter = counter
        self.log = log
        self.failures = failures
        self._key = key
        self._links = links  # (job id, image count) -> the image URLs the body carries
        self._fresh: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempts: dict[str, asyncio.Task[None]] = {}

    @property
    def claim_s(self) -> float:
        """How long one attempt holds its delivery."""
        return self.settings.timeout_s + CLAIM_MARGIN_S

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="zitops-webhooks")

    def wake(self, job_id: str) -> None:
        """A job ended on this agent: deliver its webhook (if it has one) now."""
        self._fresh.append(job_id)
        self._wake.set()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the loop; attempts in flight get ``timeout_s`` (an unfinished one is retried after a restart)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._attempts:
            await asyncio.wait(list(self._attempts.values()), timeout=timeout_s)
        self.ledger.close()

    async def _run(self) -> None:
        swept = 0.0
        while True:
            try:
                fresh, self._fresh = self._fresh, []
                for job_id in fresh:
                    opened = await asyncio.to_thread(self.ledger.open, job_id, self.claim_s)
                    if opened is not None:
                        self._begin(opened)
                if time.monotonic() - swept >= SWEEP_S:
                    swept = time.monotonic()
                    await asyncio.to_thread(self.ledger.sweep)
                room = IN_FLIGHT - len(self._attempts)
                if room > 0:
                    for due in await asyncio.to_thread(self.ledger.claim, self.claim_s, room):
                        self._begin(due)
            except Exception as exc:  # a store outage: try again next round; jobs and deliveries stay stored
                self.log("warning", "webhook round failed; retrying", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            self._wake.clear()

    def _begin(self, delivery: Delivery) -> None:
        job_id = delivery.job["id"]
        if job_id in self._attempts:
            return
        task = asyncio.get_running_loop().create_task(self._attempt(delivery), name=f"zitops-webhook-{job_id}")
        self._attempts[job_id] = task
        task.add_done_callback(lambda _t: self._attempts.pop(job_id, None))

    async def _attempt(self, delivery: Delivery) -> None:
        job_id = delivery.job["id"]
        body = event_body(delivery.job, self._links(job_id, delivery.job["images"]))
        msg_id, stamp = message_id(job_id), int(time.time())
        headers = {"content-type": "application/json", "user-agent": "zitops-webhooks",
                   "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(self._key, msg_id, stamp, body)}
        status, error = await asyncio.to_thread(post, delivery, headers, body, self.settings.timeout_s)
        attempts = delivery.attempts + 1
        ok = status is not None and 200 <= status < 300
        error = None if ok else (error or f"the receiver answered HTTP {status}")
        if ok:
            state, outcome, wait_s = "delivered", "delivered", 0.0
        elif attempts >= self.settings.max_attempts:
            state, outcome, wait_s = "failed", "gave_up", 0.0
        else:
            state, outcome = "pending", "retried"
            wait_s = backoff_s(attempts, self.settings.backoff_s, self.settings.backoff_max_s, random.random())
        try:
            await asyncio.to_thread(self.ledger.settle, job_id, attempts=attempts, state=state, next_in_s=wait_s,
                                    status=status, error=error)
        except Exception as exc:  # unrecorded: the claim runs out and the attempt is made again (at least once)
            self.log("warning", "webhook outcome not stored; it will be retried", job_id=job_id, error=str(exc))
            return
        self.counter.labels(outcome).inc()
        if outcome == "delivered":
            self.log("info", "webhook delivered", job_id=job_id, attempts=attempts, status=status)
        elif outcome == "retried":
            self.log("warning", "webhook attempt failed; retrying", job_id=job_id, attempts=attempts,
                     error=error, retry_in_s=round(wait_s, 2))
        else:
            message = f"job {job_id}: webhook to {urlsplit(delivery.url).hostname} gave up after {attempts} attempts: {error}"
            self.log("error", "webhook gave up", job_id=job_id, attempts=attempts, error=error)
            self.failures.record(None, "WebhookGaveUp", message, "", worker_id=None, vram={}, action="fail",
                                 kind="webhook")
        self._wake.set()  # a retry that is already due is looked for at once

    def status(self) -> dict[str, Any]:
        """Deliveries by state, the newest ones, and attempts in flight (for /status and the console)."""
        try:
            summary = self.ledger.summary()
        except Exception as exc:
            return {"enabled": True, "error": str(exc), "in_flight": len(self._attempts)}
        return {"enabled": True, **summary, "in_flight": len(self._attempts)}


async def resolve_target(settings: WebhookSettings, url: str) -> dict[str, str]:
    """A job's ``webhook`` checked against ``webhooks.allowed_hosts`` and resolved once: {url, address}.

    The address is pinned: every attempt connects to it, so a DNS answer that
    changes after the check cannot point deliveries somewhere else.
    """
    if not settings.enabled:
        raise InvalidRequest("webhook: webhooks are off on this agent (webhooks.secret_file is not set)")
    target = check_target(url, settings.allowed_hosts)
    addresses: list[str] = []
    if not target.literal:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, proto=6)
        except OSError:
            infos = []
        addresses = [str(info[4][0]) for info in infos]
    return {"url": target.url, "address": pinned_address(target, addresses)}


class WebhooksOff:
    """What the dispatcher holds while webhooks are off: nothing to start, wake or close."""

    def start(self) -> None:
        """Nothing to start."""

    def wake(self, job_id: str) -> None:
        """No webhook to deliver."""

    async def close(self) -> None:
        """Nothing to stop."""

    def status(self) -> dict[str, Any]:
        """Off."""
        return {"enabled": False}


def open_webhooks(settings: WebhookSettings, store: Any, counter: Counter, log: AgentLog, failures: FailureLog,
                  links: Callable[[str, int], list[str]]) -> Webhooks | WebhooksOff:
    """The delivery loop over ``store``'s ledger (SQLite or PostgreSQL); WebhooksOff without a secret."""
    if not settings.enabled or settings.secret_file is None:
        return WebhooksOff()
    from zitops.agent.dispatch.webhook_policy import parse_secret
    from zitops.secret_files import read_secret_file

    key = parse_secret(read_secret_file(settings.secret_file, "webhooks.secret_file"))
    ledger: Ledger
    if callable(getattr(store, "claim", None)):  # the fleet's PostgreSQL store
        from zitops.agent.storage.webhook_pg import PgLedger

        ledger = PgLedger(store)
    else:
        from zitops.agent.storage.webhook_ledger import SqliteLedger

        ledger = SqliteLedger(store.path)
    return Webhooks(settings, key, ledger, counter, log, failures, links)
