"""Each job's trace in the agent: a ``zitops.job`` span from submit to its final state, and its children.

The job span is a child of the HTTP request that submitted it (and so of a
caller's ``traceparent``). Its children here: the queue wait, the encode and
the store and object-store writes; the worker's ``zitops.generate`` joins it
through the carrier that :meth:`JobTraces.handed` puts in the Job message.
The context lives in this agent's memory only: a job requeued after a
restart, or claimed by another agent of a fleet, starts a trace of its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from zitops.tracing import NO_TRACER, Carrier, Tracer, current_span


@dataclass
class _Open:
    span: Any
    waiting_since_ns: int


class JobTraces:
    """The open job spans, by job id; a no-op when the tracer is off."""

    def __init__(self, tracer: Tracer = NO_TRACER) -> None:
        self.tracer = tracer
        self._open: dict[str, _Open] = {}

    def submitted(self, job_id: str, request: dict[str, Any]) -> None:
        """Open the job's span under the current HTTP request's span."""
        if not self.tracer.enabled:
            return
        span = self.tracer.start("zitops.job", parent=current_span.get(), attributes={
            "zitops.job_id": job_id, "zitops.images": len(request.get("seeds") or ()) or 1})
        self._open[job_id] = _Open(span, time.time_ns())

    def handed(self, job_id: str, worker_id: str) -> Carrier:
        """Record the queue wait that ends now; the carrier the worker continues the trace from."""
        job = self._open.get(job_id)
        if job is None:
            return {}
        now = time.time_ns()
        wait = self.tracer.start("zitops.queue_wait", parent=job.span, start_ns=job.waiting_since_ns,
                                 attributes={"zitops.worker_id": worker_id})
        self.tracer.end(wait, now)
        job.waiting_since_ns = now  # a retry waits again from here
        return self.tracer.carrier(job.span)

    @contextlib.contextmanager
    def span(self, job_id: str, name: str, **attributes: Any) -> Iterator[None]:
        """A child span of the job around the block (encode, store write, upload)."""
        job = self._open.get(job_id)
        if job is None:
            yield
            return
        span = self.tracer.start(name, parent=job.span, attributes=attributes)
        try:
            yield
        finally:
            self.tracer.end(span)

    def finished(self, job_id: str, status: str | None = None) -> None:
        """Close the job's span with its final status."""
        job = self._open.pop(job_id, None)
        if job is not None:
            self.tracer.end(job.span, attributes={"zitops.status": status})

    def trace_id(self, job_id: str) -> str | None:
        """The job's trace id, for its log lines; None when it is not traced here."""
        job = self._open.get(job_id)
        return self.tracer.log_fields(job.span).get("trace_id") if job is not None else None
