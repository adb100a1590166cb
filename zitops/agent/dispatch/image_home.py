"""Where succeeded jobs' images live: this host's output files, the fleet's store, an object store.

:class:`ImageHome` answers the dispatcher's image questions in one place:
the bytes of image N (the local file, else the fleet's copy, else the
object store's), the links a client gets (presigned URLs when an object
store is configured), retention (files, rows and objects together), and
whether the object store stops the agent from taking jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from zitops.agent.contract import JobRecord
from zitops.agent.dispatch.disk import prune_outputs
from zitops.agent.dispatch.fleet import Fleet
from zitops.agent.dispatch.job_files import expire_jobs, read_image
from zitops.agent.dispatch.object_store import ObjectStore, ObjectStoreDown
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.schedule import Periodic
from zitops.agent.storage.store import Store
from zitops.config import AgentConfig
from zitops.errors import AgentUnavailable


class ImageHome:
    """The images' places and their retention (see the module docstring)."""

    def __init__(self, config: AgentConfig, store: Store, output_dir: Path, log: AgentLog, fleet: Fleet | None) -> None:
        self.store = store
        self.output_dir = output_dir
        self.log = log
        self.queue = config.profile.queue
        self.objects = ObjectStore(config.images) if config.images.url is not None else None
        self._fleet_image: Callable[[str, int], tuple[str, bytes]] | None = fleet.image if fleet else None
        self._fleet_expire_bytes: Callable[[], list[JobRecord]] | None = fleet.expire_bytes if fleet else None
        self.check_interval_s = config.images.check_interval_s
        self._agent_id = fleet.agent_id if fleet else None

    def read(self, job_id: str, index: int) -> tuple[str, bytes]:
        """(file name, bytes) of image ``index`` of a succeeded job, or NotFound; blocking (call off the loop)."""
        objects = self.objects
        if objects is None:
            return read_image(self.store, self.output_dir, job_id, index, self._fleet_image, self._agent_id)

        def from_bucket(job: str, i: int) -> tuple[str, bytes]:
            record = self.store.get(job)
            name = record.images[i]
            try:
                return name, objects.get(job, record.attempts, name)
            except ObjectStoreDown as exc:
                raise AgentUnavailable(f"job {job}: image {i} is in the object store, which is down: {exc}") from None

        return read_image(self.store, self.output_dir, job_id, index, from_bucket, self._agent_id)

    def links(self, record: JobRecord) -> list[str] | None:
        """Presigned URLs of a succeeded job's images (valid images.url_ttl_s); None without an object store."""
        if self.objects is None:
            return None
        return [self.objects.presign(record.id, record.attempts, name) for name in record.images]

    def hook_links(self, job_id: str, count: int) -> list[str]:
        """The image links a webhook carries: presigned URLs with an object store, else the API's paths."""
        if self.objects is not None and count:
            return self.links(self.store.get(job_id)) or []
        return [f"/v1/jobs/{job_id}/images/{i}" for i in range(count)]

    def rounds(self, objects_round: Callable[[], object]) -> list[Periodic]:
        """The object store's periodic round (probe, then upload held images), when one is configured."""
        return [] if self.objects is None else [Periodic("objects", self.check_interval_s, objects_round, soon=True)]

    def refuse_if_down(self) -> None:
        """AgentUnavailable (503) with the reason while the object store is down: a new job could not finish."""
        if self.objects is not None and self.objects.down is not None:
            raise AgentUnavailable(f"{self.objects.down}; retry when it is back (GET /readyz)")

    def reasons(self) -> list[str]:
        """Readiness reasons: the object store is down."""
        return ["object_store_down"] if self.objects is not None and self.objects.down is not None else []

    def state(self) -> dict[str, Any]:
        """The object store's state for /status and the console ({"configured": false} without one)."""
        return {"configured": False} if self.objects is None else {"configured": True, **self.objects.state()}

    def expire(self, keep: Collection[str] = frozenset()) -> int:
        """Delete finished jobs older than the result TTL (or past the fleet's bytes cap) with their files and
        objects; then the oldest local images past queue.max_output_bytes, but never the files in ``keep``."""
        removed = expire_jobs(self.store, self.output_dir, self.queue.result_ttl_s, self._fleet_expire_bytes)
        left = 0
        for record in removed:
            try:
                if self.objects is not None:
                    self.objects.delete_job(record.id)
            except ObjectStoreDown:  # the objects stay (logged): the job's rows and files are gone
                left += 1
        pruned = prune_outputs(self.output_dir, self.queue.max_output_bytes, keep)
        if removed or pruned:
            self.log("info", "expired jobs removed", count=len(removed), images_over_byte_cap=len(pruned),
                     objects_left=left)
        return len(removed)

    def discard(self, names: tuple[str, ...]) -> None:
        """Delete a synchronous job's local image files (its final record's ``names``) once its response holds them."""
        for name in names:
            (self.output_dir / name).unlink(missing_ok=True)
