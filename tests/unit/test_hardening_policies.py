"""The runtime-hardening rules as functions of numbers: startup deadline, timeout kills, permanent setup
errors, when the agent exits, the output byte cap, store error mapping, the free-space floor."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.dispatch.disk import FreeSpaceFloor, over_budget, prune_outputs
from zitops.agent.storage.store_errors import Unsaved, store_error
from zitops.agent.workers import watchdog as p
from zitops.engine.request import GenerationRequest
from zitops.errors import DiskFull, StoreUnavailable


def test_startup_policy_kills_only_what_is_past_the_deadline() -> None:
    starting = [p.Starting(1, "worker", 100.0, 10.0), p.Starting(2, "successor", 100.0, 95.0),
                p.Starting(3, "standby spare", 100.0, 0.0)]
    actions = p.startup_policy(starting, startup_timeout_s=60.0)
    assert [a.pid for a in actions] == [1, 3]
    assert isinstance(actions[0], p.KillWorker) and actions[0].reason.startswith("worker still setting up after 90.0s")
    assert isinstance(actions[1], p.KillWorker)
    assert "watchdog.startup_timeout_s 60s" in actions[1].reason and not actions[1].fail_job


def test_a_job_past_its_timeout_is_killed_to_fail_the_job_a_silent_worker_to_requeue_it() -> None:
    silent = p.WorkerObservation(pid=1, state="busy", now=100.0, last_heartbeat=50.0, job_started=90.0)
    overdue = p.WorkerObservation(pid=2, state="busy", now=100.0, last_heartbeat=99.0, job_started=20.0)
    kills = p.liveness_policy([silent, overdue], heartbeat_timeout_s=10.0, job_timeout_s=60.0)
    assert [(k.pid, getattr(k, "fail_job", None)) for k in kills] == [(1, False), (2, True)]


@pytest.mark.parametrize(("exc_type", "permanent"), [("ModelError", True), ("ConfigError", True),
                                                     ("ProfileError", True), ("EngineError", False),
                                                     ("RuntimeError", False), (None, False)])
def test_only_model_and_config_setup_errors_are_permanent(exc_type: str | None, permanent: bool) -> None:
    assert p.setup_error_permanent(exc_type) is permanent


def test_the_agent_exits_only_when_no_slot_can_serve_and_one_flapped() -> None:
    assert p.exit_due([("error", False)])
    assert p.exit_due([("error", False), ("error", True)])
    assert not p.exit_due([("error", True)])  # a restart would fail the same way: no crash loop
    assert not p.exit_due([("error", False), ("ready", False)])  # another GPU still serves
    assert not p.exit_due([("error", False), ("dead", False)])  # restarting: it may come back
    assert not p.exit_due([])


def test_over_budget_deletes_oldest_first_until_the_rest_fits() -> None:
    files = [("c", 3.0, 400), ("a", 1.0, 400), ("b", 2.0, 400)]
    assert over_budget(files, 1200) == []
    assert over_budget(files, 800) == ["a"]
    assert over_budget(files, 100) == ["a", "b", "c"]


def test_the_output_cap_never_prunes_images_held_for_the_object_store(tmp_path: Path) -> None:
    for i, name in enumerate(("held-0.png", "old-0.png", "new-0.png")):
        (tmp_path / name).write_bytes(b"x" * 400)
        os.utime(tmp_path / name, (1000.0 + i, 1000.0 + i))
    (tmp_path / ".held").mkdir()  # the held jobs' journal: a directory, never pruned
    # 1200 bytes on disk, a cap of 800: the oldest file that is not held goes, and the held one counts.
    assert prune_outputs(tmp_path, 800, keep={"held-0.png"}) == ["old-0.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".held", "held-0.png", "new-0.png"]
    assert prune_outputs(tmp_path, 0, keep={"held-0.png"}) == ["new-0.png"]
    assert (tmp_path / "held-0.png").is_file()


def test_store_errors_map_disk_full_to_507_and_the_rest_to_503() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert isinstance(store_error(full, "/s/jobs.sqlite3"), DiskFull)
    assert DiskFull.http_status == 507
    assert isinstance(store_error(OSError(errno.ENOSPC, "No space left on device"), "/o"), DiskFull)
    ro = store_error(sqlite3.OperationalError("attempt to write a readonly database"), "/s/jobs.sqlite3")
    assert type(ro) is StoreUnavailable and ro.http_status == 503 and "/s/jobs.sqlite3" in str(ro)


def test_unsaved_failures_overlay_records_and_flush_when_the_store_takes_them() -> None:
    record = JobRecord(id="j1", status=JobStatus.RUNNING, request=GenerationRequest(prompt="x", seeds=(1,), width=64, height=64, steps=2), created_at=0.0)
    unsaved = Unsaved()
    unsaved.fail("j1", "worker lost", DiskFull("the disk under /s is full"))
    shown = unsaved.overlay(record)
    assert shown.status is JobStatus.FAILED and "could not record this yet" in (shown.error or "")
    with pytest.raises(DiskFull, match="job j1 failed: worker lost"):
        unsaved.check("j1")

    def refuse(job_id: str, error: str) -> JobRecord:
        raise DiskFull("still full")

    assert unsaved.flush(refuse) == [] and "j1" in unsaved.jobs
    written = unsaved.flush(lambda job_id, error: record.__class__(
        id=job_id, status=JobStatus.FAILED, request=record.request, created_at=0.0, error=error))
    assert [r.error for r in written] == ["worker lost (the disk under /s is full)"] and not unsaved.jobs
    unsaved.check("j1")  # nothing to raise once stored


def test_the_free_space_floor_names_the_setting(tmp_path: Path) -> None:
    assert FreeSpaceFloor([tmp_path], 0).low() is None
    with pytest.raises(DiskFull, match=r"below disk.min_free_mib \(1048576 MiB\)"):
        FreeSpaceFloor([tmp_path], 1_048_576).check()
