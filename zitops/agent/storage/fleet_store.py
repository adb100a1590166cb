"""The dispatcher's view of a shared (PostgreSQL) job store: fenced outcomes and the outbox.

:class:`FleetStore` implements :class:`zitops.agent.storage.store.Store` over a
:class:`SharedStore` for the dispatcher and the result writer, which stay as
they are for SQLite. What it adds, for a store other agents share and that
may be down:

- The job's encoded images go into the store first (any agent serves them;
  with an object store they are objects there instead, and the store keeps their names):
  ``upload``, on the result writer's encode thread, off the event loop; then
  ``succeed`` marks it succeeded, and the fleet's ``done`` notice wakes
  waiters on every agent. An upload the store refused is done again by
  ``succeed`` (from the files), so the order holds on every path.
- Every write for a job carries the attempt this agent holds (the record it
  claimed): the store changes nothing unless that is the job's current
  attempt, in the same statement. A job this agent no longer holds (its
  lease was found lost) writes with attempt -1, which nothing matches.
- An outcome the store refuses with Conflict (the job's lease expired and it
  was requeued or taken by another agent) is dropped with a warning: the
  other run's result is the one kept.
- An outcome that cannot be written while the store is down waits in a
  bounded outbox, in order, and is written when the store is back. The
  dispatcher gets the record as this agent decided it meanwhile. Entries are
  keyed by job and attempt: a later outcome of the same attempt replaces the
  earlier one, so one job holds at most one entry per attempt it ran, and a
  replay is idempotent (the fence refuses a write its attempt already made).
  A job this agent no longer holds is never parked: the fence would refuse
  its write forever (audit finding 2: a lost lease's ``fail``, retried every
  tick, filled the bound and pushed out other jobs' outcomes).
- The outbox lives in memory only (docs/fleet.md says why that is enough).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.storage.store import Store
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound, StoreUnavailable

OUTBOX_MAX = 1024
"""Outcomes kept while the store is down (one per job and attempt). Past it the oldest is dropped:
its job's lease expires and another agent runs it again (nothing accepted is lost).
Entries hold no image bytes: those stay in this agent's output files."""


class FleetCountsLike(Protocol):
    """The fleet's load as the store reports it."""

    queued: int
    running: int
    ready_agents: int
    image_bytes: int


class NoticeLike(Protocol):
    """One LISTEN/NOTIFY wake-up (see zitops.agent.storage.pg_listen.Notice)."""

    kind: str
    job_id: str
    status: str


class SharedStore(Store, Protocol):
    """A job store many agents share (zitops.agent.storage.store_pg.PgJobStore): leases, fleet counts, images."""

    agent_id: str
    lease_s: float

    def claim(self, agent_id: str, worker: str, limit: int = 1) -> list[JobRecord]:
        """Take up to ``limit`` of the oldest queued jobs as leases; oldest first."""

    def heartbeat(self, agent_id: str, ready: bool = True, held: Sequence[str] | None = None) -> list[str]:
        """Renew this agent's row and the leases of ``held``; the ids renewed."""

    def reap_expired(self) -> list[JobRecord]:
        """Requeue (or fail at the cap) running jobs whose lease expired; return them."""

    def fleet_counts(self) -> FleetCountsLike:
        """Queued and running jobs, ready agents, stored image bytes."""

    def fail_overdue(self) -> list[JobRecord]:
        """Fail queued jobs past their max_queue_s; the ones this call failed (no other agent's)."""

    def put_images(self, job_id: str, images: Sequence[tuple[str, bytes]], *, attempt: int | None = None) -> int:
        """Store the images of the attempt this agent holds (published by ``succeed``); their total bytes."""

    def succeed(self, job_id: str, images: tuple[str, ...], info: dict[str, Any], *,
                attempt: int | None = None) -> JobRecord:
        """Record a finished job at ``attempt`` (fenced)."""

    def fail(self, job_id: str, error: str, *, attempt: int | None = None) -> JobRecord:
        """Record a failed job at ``attempt`` (fenced)."""

    def requeue(self, job_id: str, error: str, uncount: bool = False, *, attempt: int | None = None) -> JobRecord:
        """Put a running job at ``attempt`` back in the queue (fenced)."""

    def cancel(self, job_id: str, *, running: bool = False, attempt: int | None = None) -> JobRecord:
        """Cancel a queued job, or a running one at ``attempt`` (fenced)."""

    def get_image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """Image ``index`` as (name, bytes), or NotFound."""

    def expire_bytes(self, max_bytes: int) -> list[JobRecord]:
        """Delete the oldest final jobs until the rest's images fit; return them."""

    def available(self) -> tuple[bool, str | None]:
        """(True, None), or (False, why) while the store is known down."""

    def watch(self, on_change: Callable[[str | None], None]) -> None:
        """``on_change(reason)`` once when the store is lost, ``on_change(None)`` once when it is back."""

    def listener(self, retry_s: float = 1.0) -> AsyncIterator[NoticeLike]:
        """Wake-ups: queued, done, resync."""


def shared(store: Store) -> SharedStore | None:
    """``store`` as a shared store, or None for one agent's own (SQLite)."""
    return store if callable(getattr(store, "claim", None)) else None  # type: ignore[return-value]


@dataclasses.dataclass
class Pending:
    """One outcome waiting for the store: the job, the attempt it was decided for, what to write."""

    job_id: str
    attempt: int
    action: str
    write: Callable[[], JobRecord]


class FleetStore:
    """The Store the dispatcher holds in fleet mode (see the module docstring)."""

    def __init__(self, shared_store: SharedStore, output_dir: Path, log: AgentLog,
                 written: Callable[[JobRecord], None], *, keeps_images: bool = True) -> None:
        self.shared = shared_store
        self.output_dir = output_dir
        self.keeps_images = keeps_images
        """False with an object store (images.url): the jobs' rows keep the objects' names, never their bytes."""
        self.log = log
        self._written = written  # an outbox entry reached the store: wake its waiters
        self.held: dict[str, JobRecord] = {}
        """Jobs this agent claimed and has not finished: the records it answers with while the store is down."""
        self.outbox: collections.OrderedDict[tuple[str, int], Pending] = collections.OrderedDict()
        """Outcomes waiting for the store, oldest first, one per (job, attempt)."""
        self.dropped = 0
        self._uploaded: dict[str, NotFound | Conflict | None] = {}
        """Jobs whose ``upload`` reached the store: None, or the NotFound it answered (the job is gone).
        Written on an encode thread before the loop's ``succeed`` reads it; a dict's
        single set and pop are atomic, so it needs no lock."""

    # --- reads and plain writes go straight to the store -------------------------------

    def add(self, request: GenerationRequest, owner: str | None = None,
            owner_cap: int | None = None, job_id: str | None = None) -> JobRecord:
        """Insert a queued job (the fleet is notified); with ``job_id``, the job of that id if it exists."""
        return self.shared.add(request, owner=owner, owner_cap=owner_cap, job_id=job_id)

    def get(self, job_id: str) -> JobRecord:
        """The stored job; while the store is down, the record of a job this agent holds."""
        try:
            return self.shared.get(job_id)
        except StoreUnavailable:
            if job_id in self.held:
                return self.held[job_id]
            raise

    def start(self, job_id: str, worker: str) -> JobRecord:
        """Start one given queued job (the claim path uses ``claim``)."""
        return self._hold(self.shared.start(job_id, worker))

    def claim(self, worker: str) -> JobRecord | None:
        """The oldest queued job as this agent's lease, or None."""
        claimed = self.shared.claim(self.shared.agent_id, worker, 1)
        return self._hold(claimed[0]) if claimed else None

    def _hold(self, record: JobRecord) -> JobRecord:
        self.held[record.id] = record
        return record

    def lost(self, asked: Iterable[str], renewed: Iterable[str]) -> list[str]:
        """Forget the jobs of ``asked`` (held when a heartbeat was sent) that it did not renew: their lease moved on.

        A job with a kept outcome is not lost: its lease lapses while the store is down, and the
        fence decides once the outcome is written.
        """
        kept = {job_id for job_id, _ in self.outbox}
        fresh = set(renewed)
        gone = [job_id for job_id in asked if job_id in self.held and job_id not in fresh and job_id not in kept]
        for job_id in gone:
            self.held.pop(job_id, None)
        return gone

    def attempt(self, job_id: str) -> int:
        """The attempt this agent holds of ``job_id``; -1 (refused by every fenced write) when none."""
        held = self.held.get(job_id)
        return held.attempts if held is not None else -1

    def cancel(self, job_id: str, *, running: bool = False) -> JobRecord:
        """Cancel a queued job of the fleet (with ``running``: one this agent's worker stopped, fenced)."""
        if not running:
            return self.shared.cancel(job_id)
        record = self.shared.cancel(job_id, running=True, attempt=self.attempt(job_id))
        self.held.pop(job_id, None)
        return record

    def recover(self, keep: Collection[str] = ()) -> list[str]:
        """Requeue only this agent's running jobs (other agents' leases are theirs) but ``keep``: those it
        finished whose images wait on its host; it holds them again, so its heartbeats renew their leases."""
        queued = self.shared.recover(keep)
        for job_id in keep:
            with contextlib.suppress(NotFound):
                record = self.shared.get(job_id)
                if record.status is JobStatus.RUNNING and record.agent == self.shared.agent_id:
                    self._hold(record)
        return queued

    def count(self, status: JobStatus) -> int:
        """Fleet-wide count."""
        return self.shared.count(status)

    def expire(self, max_age_s: float) -> list[JobRecord]:
        """Delete final jobs of the fleet that finished more than ``max_age_s`` ago by the database's clock."""
        return self.shared.expire(max_age_s)

    def close(self) -> None:
        """Close the store's pool."""
        self.shared.close()

    # --- outcomes: fenced, and parked while the store is down ------------------------

    def upload(self, job_id: str, names: tuple[str, ...], blobs: tuple[bytes, ...]) -> None:
        """Put a finished job's encoded images in the store; runs on an encode thread, never raises."""
        try:
            self.shared.put_images(job_id, list(zip(names, blobs, strict=True)), attempt=self.attempt(job_id))
        except (NotFound, Conflict) as exc:
            self._uploaded[job_id] = exc  # succeed drops the outcome as for any NotFound
        except StoreUnavailable:
            pass  # succeed parks the outcome; its write uploads from the files once the store is back
        else:
            self._uploaded[job_id] = None

    def succeed(self, job_id: str, images: tuple[str, ...], info: dict[str, Any]) -> JobRecord:
        """Mark the job succeeded, after its images are in the store (``upload``, else here)."""
        attempt = self.attempt(job_id)

        def write() -> JobRecord:
            if job_id in self._uploaded:
                refused = self._uploaded.pop(job_id)
                if refused is not None:
                    raise refused
            elif self.keeps_images:
                blobs = [(name, (self.output_dir / name).read_bytes()) for name in images]
                self.shared.put_images(job_id, blobs, attempt=attempt)
            return self.shared.succeed(job_id, images, info, attempt=attempt)

        return self._outcome(job_id, attempt, "succeed", write, status=JobStatus.SUCCEEDED, images=images,
                             info=info, finished_at=time.time())

    def fail(self, job_id: str, error: str) -> JobRecord:
        """Mark the job failed."""
        attempt = self.attempt(job_id)
        return self._outcome(job_id, attempt, "fail", lambda: self.shared.fail(job_id, error, attempt=attempt),
                             status=JobStatus.FAILED,
                             error=error, finished_at=time.time())

    def requeue(self, job_id: str, error: str, uncount: bool = False) -> JobRecord:
        """Put the job back in the fleet's queue."""
        attempt = self.attempt(job_id)
        return self._outcome(job_id, attempt, "requeue",
                             lambda: self.shared.requeue(job_id, error, uncount, attempt=attempt),
                             status=JobStatus.QUEUED, error=error)

    def _outcome(self, job_id: str, attempt: int, action: str, write: Callable[[], JobRecord],
                 **decided: Any) -> JobRecord:
        held = self.held.get(job_id)
        if held is None:
            # Not held (its lease was found lost): the fence refuses this write whenever it
            # runs, so it is only tried now, for the job's current record, and never parked.
            return self._written_now(job_id, action, write)
        if not self.outbox:
            try:
                return self._written_now(job_id, action, write)
            except StoreUnavailable as exc:
                self.log("warning", "job store down: outcome kept until it is back", job_id=job_id,
                         action=action, error=str(exc))
        self._park(Pending(job_id, attempt, action, write))
        return dataclasses.replace(held, **decided)

    def _written_now(self, job_id: str, action: str, write: Callable[[], JobRecord]) -> JobRecord:
        try:
            record = self._attempt(job_id, action, write)
        except (Conflict, NotFound):
            self.held.pop(job_id, None)
            raise
        self.held.pop(job_id, None)  # StoreUnavailable keeps it held: the caller parks the outcome
        return record

    def _attempt(self, job_id: str, action: str, write: Callable[[], JobRecord]) -> JobRecord:
        """``write()``; on a refusal (the lease moved on) the job's current record. Any thread."""
        try:
            record = write()
        except (Conflict, NotFound) as exc:
            # Reaped while we ran it (a stall past the lease, or the store lost
            # our claim): the job belongs to the queue or another agent now.
            self.log("warning", f"job {action} dropped: its lease moved on", job_id=job_id, error=str(exc))
            try:
                return self.shared.get(job_id)
            except NotFound:
                raise exc from None
        return record

    def _park(self, pending: Pending) -> None:
        key = (pending.job_id, pending.attempt)
        self.outbox.pop(key, None)  # the later outcome of the same attempt replaces the earlier
        self.outbox[key] = pending
        while len(self.outbox) > OUTBOX_MAX:
            _, lost = self.outbox.popitem(last=False)
            self.held.pop(lost.job_id, None)
            self.dropped += 1
            self.log("error", "outbox full: outcome dropped; the job's lease expires and it runs again",
                     job_id=lost.job_id, action=lost.action)

    async def flush(self, off_loop: Callable[..., Awaitable[object]]) -> int:
        """Write parked outcomes in order while the store answers, each off the loop; how many were written."""
        done = 0
        while self.outbox:
            key, pending = next(iter(self.outbox.items()))
            try:
                record = await off_loop(self._attempt, pending.job_id, pending.action, pending.write)
            except StoreUnavailable:
                break
            except (Conflict, NotFound):
                record = None
            if self.outbox.get(key) is pending:  # (an overflow or a later outcome may have replaced it meanwhile)
                del self.outbox[key]
            self.held.pop(pending.job_id, None)
            done += 1
            if isinstance(record, JobRecord):
                self._written(record)
        if done:
            self.log("info", "job store back: kept outcomes written", count=done, left=len(self.outbox))
        return done
