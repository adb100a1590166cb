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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.failure_log import FailureLog
from zitops.agent.ops.schedule import Periodic
from zitops.agent.storage.fleet_store import FleetCountsLike, FleetStore, SharedStore
from zitops.config import AgentConfig
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
        self.store = FleetStore(shared_store, output_dir, log, lambda record: wake(record.id))
        """The Store the dispatcher and the result writer use."""
        self.agent_id = shared_store.agent_id
        self.counts: FleetCountsLike | None = None
        self._wanted = True
        self._reported: bool | None = None  # readiness as the last heartbeat told it
        self._listener: asyncio.Task[None] | None = None

    # --- the claim path ------------------------------------------------------------

    def want(self) -> None:
        """There may be queued jobs: the next dispatch claims."""
        self._wanted = True

    def claim(self, worker: str) -> JobRecord | None:
        """The oldest queued job of the fleet as this agent's lease for ``worker``, or None."""
        if self._ready() is not self._reported:
            self.heartbeat()  # the fleet counts ready agents for its depth: tell it at once, not next round
        if not self._wanted:
            return None
        try:
            record = self.store.claim(worker)
        except StoreUnavailable:
            return None  # readiness says why; the listener's resync wakes us when it is back
        if record is None:
            self._wanted = False
        return record

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
                self.flush()
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
        self.flush()
        with contextlib.suppress(StoreUnavailable):
            self.shared.heartbeat(self.agent_id, ready=False)

    def heartbeat(self) -> None:
        """Renew this agent's leases and its row; note jobs it runs whose lease was taken away."""
        ready = self._ready()
        try:
            held = set(self.shared.heartbeat(self.agent_id, ready=ready))
        except StoreUnavailable:
            return
        self._reported = ready
        lost = [job_id for job_id, record in self.store.held.items()
                if record.status is JobStatus.RUNNING and job_id not in held
                and not any(p.job_id == job_id for p in self.store.outbox)]
        for job_id in lost:
            self.store.held.pop(job_id, None)
            self.log("warning", "lease lost: the job was reaped while this agent ran it; its result "
                     "will be dropped", job_id=job_id)

    def reap(self) -> list[JobRecord]:
        """Requeue (or fail at the cap) the jobs of agents whose leases expired; record each."""
        try:
            reaped = self.shared.reap_expired()
        except StoreUnavailable:
            return []
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

    def flush(self) -> None:
        """Write outcomes kept while the store was down."""
        if self.store.outbox:
            self.store.flush()

    # --- admission, images, retention, reports -------------------------------------------

    def admit(self, retry_after: Callable[[int], int]) -> None:
        """QueueFull when the fleet's waiting jobs reach its depth; StoreUnavailable while it is down.

        Admitted, the job is about to be added: the next dispatch claims.
        """
        counts = self.counts = self.shared.fleet_counts()
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
        return [] if up else [f"job store unavailable: {why}"]

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
