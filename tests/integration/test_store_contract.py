"""One contract, two stores: the SQLite JobStore and the PostgreSQL PgJobStore pass the same lifecycle.

The dispatcher uses whichever store it is given, so every assertion here is
one the dispatcher relies on. PostgreSQL runs in a throwaway cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from zitops.agent.contract import JobStatus
from zitops.agent.storage.jobs import JobStore
from zitops.agent.storage.store import Store
from zitops.agent.storage.store_pg import PgJobStore
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound, QueueFull

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

pytest_plugins = ["tests.pg_support"]  # the pg_cluster and pg_db fixtures


Opener = Callable[[], Store]


def _req(prompt: str = "a fox", seed: int = 1) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, seeds=(seed, seed + 1), width=64, height=64, steps=2)


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the store under test; a second call is the same store after an agent restart."""
    opened: list[Store] = []

    def open_store() -> Store:
        if request.param == "sqlite":
            store: Store = JobStore(tmp_path)
        else:
            db: PgDatabase = request.getfixturevalue("pg_db")
            store = PgJobStore(db.url, password_file=db.password_file, agent_id="agent-a")
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def test_lifecycle_and_attempts(opener: Opener) -> None:
    store = opener()
    rec = store.add(_req())
    assert rec.status is JobStatus.QUEUED and rec.attempts == 0 and rec.worker is None
    assert rec.request == _req() and rec.created_at > 0
    rec = store.start(rec.id, "w0")
    assert (rec.status, rec.attempts, rec.worker) == (JobStatus.RUNNING, 1, "w0")
    assert rec.started_at is not None and rec.started_at >= rec.created_at
    rec = store.requeue(rec.id, "requeued after: worker died")
    assert (rec.status, rec.attempts, rec.worker, rec.error) == (
        JobStatus.QUEUED, 1, None, "requeued after: worker died")
    rec = store.start(rec.id, "w1")
    rec = store.succeed(rec.id, (f"{rec.id}-0.png", f"{rec.id}-1.png"), {"seconds": 0.1, "where": Path("/x")})
    assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 2 and rec.error is None
    assert rec.images == (f"{rec.id}-0.png", f"{rec.id}-1.png")
    assert rec.info == {"seconds": 0.1, "where": "/x"}  # non-JSON values stored as strings
    assert rec.finished_at is not None and rec.started_at is not None and rec.finished_at >= rec.started_at
    assert store.get(rec.id) == rec
    assert rec.public()["images"] == [f"/v1/jobs/{rec.id}/images/0", f"/v1/jobs/{rec.id}/images/1"]
    with pytest.raises(NotFound, match="no such job"):
        store.get("nope")


def test_requeue_uncount_and_fail(opener: Opener) -> None:
    store = opener()
    rec = store.start(store.add(_req()).id, "w0")
    rec = store.requeue(rec.id, "", uncount=True)
    assert (rec.status, rec.attempts, rec.error) == (JobStatus.QUEUED, 0, None)
    store.start(rec.id, "w0")
    rec = store.fail(rec.id, "EngineError: boom")
    assert (rec.status, rec.error, rec.attempts) == (JobStatus.FAILED, "EngineError: boom", 1)
    assert store.count(JobStatus.FAILED) == 1 and store.count(JobStatus.QUEUED) == 0


def test_cancel_only_queued(opener: Opener) -> None:
    store = opener()
    a, b = store.add(_req()), store.add(_req())
    cancelled = store.cancel(a.id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
    store.start(b.id, "w0")
    with pytest.raises(Conflict, match="is running; only queued jobs can be cancelled"):
        store.cancel(b.id)
    with pytest.raises(Conflict, match="is cancelled"):
        store.cancel(a.id)
    with pytest.raises(NotFound):
        store.cancel("nope")


def test_recover_after_crash_requeues_running_in_creation_order(opener: Opener) -> None:
    store = opener()
    ids = [store.add(_req(seed=i)).id for i in range(4)]
    store.start(ids[1], "w0")  # running when the agent "died"
    store.fail(ids[3], "EngineError: boom")
    # No close(): a kill -9 does not close anything either.
    again = opener()
    assert again.recover() == [ids[0], ids[1], ids[2]]
    rec = again.get(ids[1])
    assert rec.status is JobStatus.QUEUED and rec.attempts == 1 and "agent stopped" in (rec.error or "")
    assert again.get(ids[3]).status is JobStatus.FAILED


def test_recover_keeps_running_the_jobs_whose_images_wait_for_the_object_store(opener: Opener) -> None:
    store = opener()
    ids = [store.add(_req(seed=i)).id for i in range(3)]
    for job_id in ids:
        store.start(job_id, "w0")
    again = opener()
    assert again.recover(keep=[ids[1], "gone"]) == [ids[0], ids[2]]  # unknown ids in keep are harmless
    kept = again.get(ids[1])
    assert kept.status is JobStatus.RUNNING and kept.attempts == 1 and kept.error is None
    assert again.succeed(ids[1], ("x.png",), {}).status is JobStatus.SUCCEEDED  # then finished, not rerun


def test_expire_removes_only_old_final_jobs(opener: Opener) -> None:
    store = opener()
    done = store.add(_req())
    store.start(done.id, "w0")
    store.succeed(done.id, ("x.png",), {})
    waiting = store.add(_req())
    assert store.expire(3600) == []
    removed = store.expire(-3600)  # "finished before an hour from now": every final job
    assert [r.id for r in removed] == [done.id] and removed[0].images == ("x.png",)
    with pytest.raises(NotFound):
        store.get(done.id)
    assert store.get(waiting.id).status is JobStatus.QUEUED
    assert store.count(JobStatus.QUEUED) == 1


def test_an_owner_is_kept_and_its_share_of_the_queue_is_capped(opener: Opener) -> None:
    store = opener()
    first = store.add(_req(seed=1), owner="h-alice", owner_cap=2)
    store.add(_req(seed=2), owner="h-alice", owner_cap=2)
    assert first.owner == "h-alice" and store.get(first.id).owner == "h-alice"
    with pytest.raises(QueueFull, match="per_token_share"):
        store.add(_req(seed=3), owner="h-alice", owner_cap=2)
    assert store.count(JobStatus.QUEUED) == 2  # the refused job was not stored
    assert store.add(_req(seed=4), owner="h-bob", owner_cap=2).owner == "h-bob"
    store.start(first.id, "w0")  # a started job no longer counts against the share
    assert store.add(_req(seed=5), owner="h-alice", owner_cap=2).owner == "h-alice"
    assert store.add(_req(seed=6)).owner is None


def test_a_final_job_keeps_its_input_images_sizes_not_their_bytes(opener: Opener) -> None:
    """The H100 soak's store grew 0.76 MiB a job: finished img2img jobs kept megabytes of base64 for result_ttl_s."""
    store = opener()
    image, mask, control = "iVBORw0KGgo" + "A" * 100_000, "B" * 5_000, "C" * 7_000
    inpaint = store.add(replace(_req(), init_image=image, mask=mask))
    waiting = store.add(replace(_req(seed=3), init_image=image))
    controlled = store.add(replace(_req(seed=5), control_image=control))
    # Queued and running jobs keep every byte: a restart or a requeue runs them again.
    assert store.start(inpaint.id, "w0").request.init_image == image
    assert store.get(waiting.id).request.init_image == image
    done = store.succeed(inpaint.id, ("x.png",), {})
    size = f"<{len(image)} base64 characters>"
    assert (done.request.init_image, done.request.mask, done.request.control_image) == (
        size, "<5000 base64 characters>", None)
    assert done.request.kind == "inpaint" and done.request.public_params()["init_image"] == size
    assert store.cancel(waiting.id).request.init_image == size
    store.start(controlled.id, "w0")
    assert store.fail(controlled.id, "boom").request.control_image == "<7000 base64 characters>"
    # The same after a restart, and nothing else of the request changed.
    again = opener().get(inpaint.id).request
    assert replace(again, init_image=image, mask=mask) == replace(_req(), init_image=image, mask=mask)


def test_the_sqlite_file_stays_flat_over_many_finished_image_jobs(tmp_path: Path) -> None:
    """Freed pages are reused: 40 img2img jobs of 1 MB each leave a file of a few, not 40, megabytes."""
    store = JobStore(tmp_path)
    try:
        for seed in range(40):
            rec = store.add(replace(_req(seed=seed), init_image="A" * 2**20))
            store.start(rec.id, "w0")
            store.succeed(rec.id, ("x.png",), {})
    finally:
        store.close()
    size = sum(p.stat().st_size for p in tmp_path.glob("jobs.sqlite3*"))
    assert size < 12 * 2**20, f"the job store holds {size / 2**20:.1f} MiB after 40 finished jobs"
