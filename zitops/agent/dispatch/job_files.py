"""A job's image files: read back for the API, and removed with the job by retention.

Each agent writes the images of the jobs it ran under its ``output_dir``. In
a fleet the same bytes are also in the shared store, so an agent serves a job
another agent ran from there (``fleet``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.storage.store import Store
from zitops.errors import NotFound


class FleetImages(Protocol):
    """The fleet's side of an image read (zitops.agent.dispatch.fleet.Fleet)."""

    agent_id: str

    def image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """Image ``index`` of a job of the fleet, from the store."""


def read_image(store: Store, output_dir: Path, job_id: str, index: int,
               fleet: FleetImages | None) -> tuple[str, bytes]:
    """(file name, bytes) of image ``index`` of a succeeded job, or NotFound saying why.

    In a fleet, this agent's file is the job's image only when
    this agent ran the attempt that succeeded: a stale attempt it finished
    after its lease moved on wrote a file of the same name that nobody must read.
    """
    record = store.get(job_id)
    if record.status is not JobStatus.SUCCEEDED:
        raise NotFound(f"job {job_id}: is {record.status.value}; images exist only for succeeded jobs")
    if not 0 <= index < len(record.images):
        raise NotFound(f"job {job_id}: no image {index}; it has {len(record.images)} (0..{len(record.images) - 1})")
    if fleet is None or record.agent == fleet.agent_id:
        with contextlib.suppress(FileNotFoundError):
            return record.images[index], (output_dir / record.images[index]).read_bytes()  # this agent wrote it
    if fleet is not None:
        return fleet.image(job_id, index)
    raise NotFound(f"job {job_id}: image {index} has expired")


def expire_jobs(store: Store, output_dir: Path, ttl_s: float,
                over_bytes: Callable[[], list[JobRecord]] | None) -> list[JobRecord]:
    """Delete final jobs older than ``ttl_s`` (and those ``over_bytes`` trims), with this agent's files."""
    removed = store.expire(time.time() - ttl_s) + (over_bytes() if over_bytes is not None else [])
    for record in removed:
        for name in record.images:
            (output_dir / name).unlink(missing_ok=True)
    return removed
