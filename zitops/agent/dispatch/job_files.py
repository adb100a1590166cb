"""A job's image files: read back for the API, and removed with the job by retention.

Each agent writes the images of the jobs it ran under its ``output_dir``. In
a fleet the same bytes are also in the shared store, so an agent serves a job
another agent ran from there (``fleet_image``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.storage.store import Store
from zitops.errors import NotFound


def read_image(store: Store, output_dir: Path, job_id: str, index: int,
               fleet_image: Callable[[str, int], tuple[str, bytes]] | None,
               agent_id: str | None = None) -> tuple[str, bytes]:
    """(file name, bytes) of image ``index`` of a succeeded job, or NotFound saying why.

    In a fleet (``agent_id``), this agent's file is the job's image only when
    this agent ran the attempt that succeeded: a stale attempt it finished
    after its lease moved on wrote a file of the same name that nobody must read.
    """
    record = store.get(job_id)
    if record.status is not JobStatus.SUCCEEDED:
        raise NotFound(f"job {job_id}: is {record.status.value}; images exist only for succeeded jobs")
    if not 0 <= index < len(record.images):
        raise NotFound(f"job {job_id}: no image {index}; it has {len(record.images)} (0..{len(record.images) - 1})")
    if agent_id is None or record.agent == agent_id:
        with contextlib.suppress(FileNotFoundError):
            return record.images[index], (output_dir / record.images[index]).read_bytes()  # this agent wrote it
    if fleet_image is not None:
        return fleet_image(job_id, index)
    raise NotFound(f"job {job_id}: image {index} has expired")


def expire_jobs(store: Store, output_dir: Path, ttl_s: float,
                over_bytes: Callable[[], list[JobRecord]] | None) -> list[JobRecord]:
    """Delete final jobs older than ``ttl_s`` (and those ``over_bytes`` trims), with this agent's files."""
    removed = store.expire(ttl_s) + (over_bytes() if over_bytes is not None else [])
    for record in removed:
        for name in record.images:
            (output_dir / name).unlink(missing_ok=True)
    return removed
