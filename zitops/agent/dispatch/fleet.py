"""Fleet mode: this agent's part in a fleet that shares one PostgreSQL job store.

The dispatcher holds a :class:`Fleet` when its store is shared, and asks it
for work instead of keeping its own queue: for each idle worker it claims the
oldest queued job of the fleet (:meth:`Fleet.claim`). The fleet decides when
claiming is worth a query: :data:`QUEUED_GRACE_S` after a ``queued`` notice
(the accepting agent goes first), after a ``resync`` notice, after its own submit, after a claim that found a job, and on
a slow safety poll. Otherwise the claim path costs nothing, so the
dispatcher's 0.2 s tick is not a tight poll of the database.

The periodic rounds: heartbeat every lease/3 (renews this agent's leases and
its row, which counts it among the ready agents), the reaper every
:data:`REAP_S` (jobs of dead agents back to the queue, with failure records),
the outbox flush and the safety poll. ``done`` notices wake synchronous
waiters on this agent whichever agent ran the job. docs/fleet.md has the design.

The event loop never waits on the store in the claim path and the rounds:
claims, heartbeats, the reaper, the outbox flush and the admission's counts
run on threads (:meth:`Fleet._off_loop`), and the loop applies their results.
While the store is unreachable the agent stays live and says so: readiness
names the reason, submits get a 503 at once, finished jobs wait in the
outbox, and one warning is logged when the store is lost and one when it is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.failure_log import FailureLog
from zitops.agent.ops.schedule import Periodic
from zitops.agent.storage.fleet_store import FleetCountsLike, FleetStore, SharedStore
from zitops.config import AgentConfig
from zitops.engine.request import GenerationRequest
from zitops.errors import AgentUnavailable, DiskFull, QueueFull, StoreUnavailable

REAP_S = 1.0
"""How often this agent looks for expired leases: failover takes at most lease_s + this + a claim."""

POLL_S = 5.0
"""The safety poll behind LISTEN/NOTIFY (a notification sent while the listener reconnected is lost)."""

FLUSH_S = 1.0
"""How often kept outcomes are retried while the store is down."""

QUEUED_GRACE_S = 0.05
"""How long a ``queued`` notice waits before this agent claims. The agent that
accepted the job claims at once, right after its insert; without the grace an
idle peer raced it and won about half the time (benchmarks/fleet.py), so the
waiting request paid for a cross-agent ``done`` wake-up and an image read from
the store (~35 ms measured). A job accepted by a busy agent starts this much later."""


class Fleet:
    """Claims, heartbeats, the reaper, wake-ups and fleet-wide back-pressure for one agent."""

    def __init__(self, shared_store: SharedStore, config: AgentConfig, output_dir: Path, log: AgentLog,
                 failures: FailureLog, wake: Callable[[str], None], waited: Callable[[], Iterable[str]],
                 dispatch: Callable[[], None], ready: Callable[[], bool]) -> None:
        self.shared = shared_store
        self.config = config
        self.log = log
        self.failures = failures
        self._wake = wake  # a job is final (or may be): its synchronous waiters look again
        self._waited = waited  # the ids someone on this agent waits for
        self._dispatch = dispatch
        self._ready = ready
        self.store = FleetStore(shared_store, output_dir, log, lambda record: wake(record.id),
                                keeps_images=config.images.url is None)  # else the objects hold the bytes
        """The Store the dispatcher and the result writer use."""
        self.agent_id = shared_store.agent_id
        self.counts: FleetCountsLike | None = None
        self._wanted = True
        self._wants = 0  # want() calls so far: a claim that found nothing clears _wanted only if none came meanwhile
        self._claimed: collections.deque[JobRecord] = collections.deque()  # claimed off the loop, not yet handed
        self._claiming: asyncio.Task[None] | None = None
        self._telling: asyncio.Task[None] | None = None  # a heartbeat that tells a readiness change
        self._flushing: asyncio.Task[int] | None = None
        self._reported: bool | None = None  # readiness as the last heartbeat told it
        self._listener: asyncio.Task[None] | None = None
        self._outage = False  # a heartbeat failed (or the store was lost) and none succeeded since
        self._reap_after = 0.0  # monotonic: no reaping before it (one lease after an outage ended)
        shared_store.watch(self._store_changed)

    def _store_changed(self, reason: str | None) -> None:
        """The one warning when the store is lost, and the one when it is back (any thread)."""
        if reason is None:
            self.log("warning", "job store back: admitting jobs again")
        else:
            self._outage = True
            self.log("warning", "job store lost: new jobs are refused (503); running jobs finish into the "
                     "outbox", reason=reason)

    @staticmethod
    async def _off_loop(fn: Callable[..., object], *args: object) -> object:
        """``fn(*args)`` on a thread: a store call's deadline is waited for there, never on the loop."""
        return await asyncio.to_thread(fn, *args)

    # --- the claim path ------------------------------------------------------------

    def requeued(self, job_id: str) -> None:
        """A job this agent put back in the fleet's queue (its worker died): claim again, from the store."""
        del job_id
        self.want()

    def want(self) -> None:
        """There may be queued jobs: the next dispatch claims."""
        self._wanted = True
        self._wants += 1

    def claim(self, worker: str) -> JobRecord | None:
        """A job this agent claimed for ``worker``'s turn, or None (a claim is then started off the loop)."""
        loop = asyncio.get_running_loop()
        if self._ready() is not self._reported and self._telling is None:
            # The fleet counts ready agents for its depth: tell it at once, not next round.
            self._telling = loop.create_task(self._tell_readiness(), name="zitops-fleet-tell")
        if self._claimed:
            return self._claimed.popleft()
        if self._wanted and self._claiming is None and self.shared.available()[0]:
            self._claiming = loop.create_task(self._claim(worker), name="zitops-fleet-claim")
        return None

    async def _tell_readiness(self) -> None:
        try:
            await self.heartbeat()
        finally:
            self._telling = None

    async def _claim(self, worker: str) -> None:
        wants = self._wants
        try:
            record = await self._off_loop(self.store.claim, worker)
        except StoreUnavailable:  # readiness says why; the listener's resync wakes us when it is back
            return
        finally:
            self._claiming = None
        if record is None:
            if wants == self._wants:
                self._wanted = False
            return
        assert isinstance(record, JobRecord)
        self._claimed.append(record)
        self._dispatch()

    async def _listen(self) -> None:
        async for notice in self.shared.listener(retry_s=1.0):
            if notice.kind == "done":
                self._wake(notice.job_id)
                continue
            if notice.kind == "queued":  # the accepting agent claims first (QUEUED_GRACE_S)
                asyncio.get_running_loop().call_later(QUEUED_GRACE_S, self._want_and_dispatch)
                continue
            self.want()
            if notice.kind == "resync":  # notices may have been lost: look at the store once
                await self.flush()
                self._wake_waiters()
            self._dispatch()

    def _want_and_dispatch(self) -> None:
        self.want()
        self._dispatch()

    def _wake_waiters(self) -> None:
        for job_id in list(self._waited()):
            self._wake(job_id)

    def poll(self) -> None:
        """The safety poll: claim once, and let waiters look again."""
        self.want()
        self._wake_waiters()
        self._dispatch()

    # --- lifecycle and rounds ---------------------------------------------------------

    def start(self) -> list[Periodic]:
        """Start listening; return the fleet's periodic rounds for the dispatcher's schedule."""
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="zitops-fleet-listen")
        lease = self.shared.lease_s
        return [
            Periodic("fleet-heartbeat", lease / 3.0, self.heartbeat, soon=True),
            Periodic("fleet-reap", REAP_S, self.reap),
            Periodic("fleet-flush", FLUSH_S, self.flush),
            Periodic("fleet-poll", POLL_S, self.poll),
        ]

    async def close(self) -> None:
        """Stop listening; tell the fleet this agent takes no more work; write what is kept if possible."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for task in (self._claiming, self._telling, self._flushing):
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        await self.flush()
        with contextlib.suppress(StoreUnavailable):
            await self._off_loop(self.shared.heartbeat, self.agent_id, False, list(self.store.held))

    async def heartbeat(self) -> None:
        """Renew this agent's leases and its row; note jobs it runs whose lease was taken away."""
        ready = self._ready()
        # Only jobs held before the heartbeat was sent can be missing from its answer:
        # a claim that commits while it is in flight is not a lost lease.
        before = {job_id for job_id, record in self.store.held.items() if record.status is JobStatus.RUNNING}
        try:
            rows = await self._off_loop(self.shared.heartbeat, self.agent_id, ready, sorted(before))
        except StoreUnavailable:
            self._outage = True
            return
        assert isinstance(rows, list)
        if self._outage:  # every owner gets a full lease to renew before this agent reaps anything
            self._outage, self._reap_after = False, time.monotonic() + self.shared.lease_s
        self._reported = ready
        for job_id in self.store.lost(before, rows):
            self.log("warning", "lease lost: the job was reaped while this agent ran it; its result "
                     "will be dropped", job_id=job_id)

    async def reap(self) -> list[JobRecord]:
        """Requeue (or fail at the cap) the jobs of agents whose leases expired; record each.

        Not while this agent's store is out, nor within one lease after (see heartbeat): an outage
        that stopped every owner's heartbeats (a network cut, a PgBouncer restart, a failover)
        must not turn into reaping jobs whose owners are alive and about to renew.
        """
        if self._outage or time.monotonic() < self._reap_after:
            return []
        try:
            reaped = await self._off_loop(self.shared.reap_expired)
        except StoreUnavailable:
            return []
        assert isinstance(reaped, list)
        for record in reaped:
            failed = record.status is JobStatus.FAILED
            reason = record.error or "lease expired"
            self.log("warning", "job failed" if failed else "job requeued", job_id=record.id,
                     reason=reason, reaped_by=self.agent_id)
            self.failures.record(record, "AgentLost", reason, "", worker_id=record.worker, vram={},
                                 action="fail" if failed else "requeue", kind="agent")
        if reaped:
            self.want()
            self._dispatch()
        return reaped

    async def overdue(self) -> list[JobRecord]:
        """The fleet's queued jobs past their max_queue_s, failed now in SQL by this agent (each by one agent)."""
        try:
            late = await self._off_loop(self.shared.fail_overdue)
        except StoreUnavailable:  # the next round, on any agent, fails them
            return []
        assert isinstance(late, list)
        return late

    async def flush(self) -> None:
        """Write outcomes kept while the store was down (one flush at a time, off the loop)."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
            return
        if self.store.outbox:
            self._flushing = asyncio.get_running_loop().create_task(self.store.flush(self._off_loop))
            try:
                await asyncio.shield(self._flushing)
            finally:
                self._flushing = None

    # --- admission, images, retention, reports -------------------------------------------

    async def submit(self, request: GenerationRequest, owner: str | None, owner_cap: int | None,
                     retry_after: Callable[[int], int], job_id: str | None = None) -> JobRecord:
        """Admit and add a job, off the loop; a 503 at once while the store is known unreachable."""
        up, why = self.shared.available()
        if not up:
            raise StoreUnavailable(f"store unreachable: {why}; the job was not accepted, retry later")
        counts = await self._off_loop(self.shared.fleet_counts)
        self.admit(counts, retry_after)  # type: ignore[arg-type]
        record = await self._off_loop(self.store.add, request, owner, owner_cap, job_id)
        assert isinstance(record, JobRecord)
        return record

    def admit(self, counts: FleetCountsLike, retry_after: Callable[[int], int]) -> None:
        """QueueFull when the fleet's waiting jobs reach its depth.

        Admitted, the job is about to be added: the next dispatch claims.
        """
        self.counts = counts
        per_agent = self.config.profile.queue.depth
        cap = self.config.store.fleet_depth or per_agent * max(1, counts.ready_agents)
        if counts.queued >= cap:
            how = "store.fleet_depth" if self.config.store.fleet_depth else \
                f"queue.depth {per_agent} x {max(1, counts.ready_agents)} ready agents"
            raise QueueFull(f"fleet queue full: {counts.queued} jobs waiting (cap {cap}, {how}); retry later",
                            retry_after_s=retry_after(counts.queued))
        self.want()

    @staticmethod
    def waited(job_id: str, read: Callable[[str], JobRecord]) -> JobRecord:
        """``read(job_id)`` for a synchronous waiter; while the store is down, a 503 naming the job to poll."""
        try:
            return read(job_id)
        except DiskFull:
            raise
        except StoreUnavailable as exc:  # the job is kept in the store: the client polls it once it is back
            raise AgentUnavailable(f"job {job_id} is kept, but {exc}; poll GET /v1/jobs/{job_id} "
                                   "once the job store is back") from exc

    def ours(self, job_id: str, fresh: tuple[bytes, ...], read: Callable[[str], JobRecord]) -> tuple[bytes, ...] | None:
        """``fresh`` when this agent ran the attempt that succeeded; None (read the store) after a stale run."""
        return fresh if read(job_id).agent == self.agent_id else None

    def image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """Image ``index`` of a job of the fleet, from the store."""
        return self.shared.get_image(job_id, index)

    def expire_bytes(self) -> list[JobRecord]:
        """Delete the oldest final jobs while the fleet's images exceed store.max_image_mib."""
        cap = self.config.store.max_image_mib
        return self.shared.expire_bytes(cap * 1024 * 1024) if cap else []

    def reasons(self) -> list[str]:
        """Readiness reasons of the fleet's side: the store is down."""
        up, why = self.shared.available()
        return [] if up else [f"store unreachable: {why}"]

    def metrics_text(self) -> str:
        """Prometheus text: the fleet's queued and running jobs, ready agents, image bytes, store up."""
        with contextlib.suppress(StoreUnavailable):
            self.counts = self.shared.fleet_counts()
        up = self.shared.available()[0]
        lines = ["# HELP zitops_store_up 1 while the shared job store answers.", "# TYPE zitops_store_up gauge",
                 f"zitops_store_up {int(up)}",
                 "# HELP zitops_store_outbox Job outcomes kept in memory until the store is back.",
                 "# TYPE zitops_store_outbox gauge", f"zitops_store_outbox {len(self.store.outbox)}"]
        c = self.counts
        if c is not None:
            lines += ["# HELP zitops_fleet_jobs Jobs of the whole fleet by status (queued, running).",
                      "# TYPE zitops_fleet_jobs gauge",
                      f'zitops_fleet_jobs{{status="queued"}} {c.queued}',
                      f'zitops_fleet_jobs{{status="running"}} {c.running}',
                      "# HELP zitops_fleet_agents_ready Agents with a fresh heartbeat that said ready.",
                      "# TYPE zitops_fleet_agents_ready gauge", f"zitops_fleet_agents_ready {c.ready_agents}",
                      "# HELP zitops_fleet_image_bytes Bytes of images kept in the store.",
                      "# TYPE zitops_fleet_image_bytes gauge", f"zitops_fleet_image_bytes {c.image_bytes}"]
        return "\n".join(lines) + "\n"
