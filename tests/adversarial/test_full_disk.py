"""A really full filesystem under the job store and the outputs (a small tmpfs, mounted as root).

No job stays ``running`` or vanishes: a synchronous waiter gets a fast 507 naming the disk, the job fails in
memory and its failure reaches the store once space is back; a worker lost meanwhile is still restarted; the
free-space floor (disk.min_free_mib) refuses new jobs with 507 before the disk is full.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_support import ADMIN, ALICE, Agent, auth, events, status, wait_for  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (a really full filesystem)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave_mib: float = 0.0) -> Path:
    """Fill ``mnt`` with one file until ENOSPC (or until ``leave_mib`` is left); return the file."""
    filler = mnt / "filler"
    with open(filler, "ab", buffering=0) as fh:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            while True:
                st = os.statvfs(mnt)
                if leave_mib and st.f_bavail * st.f_frsize <= leave_mib * 2**20:
                    return filler
                try:
                    if not fh.write(b"\0" * chunk):
                        break
                except OSError:
                    break
    return filler


def _agent(tmp_path: Path, mnt: Path, sets: list[str], **faults: Any) -> Agent:
    paths = {"state_dir": str(mnt / "state"), "output_dir": str(mnt / "out"),
             "log_dir": str(tmp_path / "logs"), "cache_dir": str(tmp_path / "cache")}
    return Agent(tmp_path, sets=["queue.job_timeout_s=300", *sets],
                 extra={"paths": paths, "engine": {"kind": "faulty", "faults": {"inner": "synthetic", **faults}}})


def test_full_disk_mid_job_gives_the_waiter_a_fast_507_and_loses_nothing(tmp_path: Path, disk: Path) -> None:
    # The floor is off so the store itself meets the full disk; the sync route would wait 1,500 s otherwise.
    agent = _agent(tmp_path, disk, ["disk.min_free_mib=0"], job_seconds=2.0, pixels="noise")
    try:
        agent.wait_ready()
        body = {"prompt": "fills the disk", "size": "256x256", "response_format": "b64_json"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sync = pool.submit(httpx.post, agent.url + "/v1/images/generations", json=body, headers=auth(ALICE),
                               timeout=60)
            job_id = wait_for(lambda: next((w["current_job"] for w in status(agent)["workers"] if w["current_job"]),
                                           None), 30, "the synchronous job to run", agent)
            filler = fill(disk)
            r = sync.result()
        assert r.status_code == 507, r.text
        message = r.json()["error"]["message"]
        assert job_id in message and "\n" not in message
        assert "No space left on device" in message or "full" in message
        job = agent.client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).json()
        assert job["status"] == "failed"  # never left "running"
        # New work is refused at once while the store cannot write: 507, one line.
        r = agent.client.post("/v1/jobs", json={"prompt": "no room"}, headers=auth(ALICE))
        assert r.status_code == 507 and "disk" in r.json()["error"]["message"]
        filler.unlink()
        # Space is back: the unsaved failure reaches the store, and jobs run again.
        stored = wait_for(lambda: (j := agent.client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).json())
                          and "could not record this yet" not in j["error"] and j, 30, "the failure stored", agent)
        # The image is never written (its response carries it), so the full disk meets the job store: the stored
        # failure names the store's own reason.
        assert stored["status"] == "failed" and ("No space left on device" in stored["error"] or
                                                  "full" in stored["error"]), stored["error"]
        r = agent.client.post("/v1/images/generations", json={**body, "prompt": "room again"}, headers=auth(ALICE))
        assert r.status_code == 200, r.text
    finally:
        agent.stop()


def test_a_worker_lost_on_a_full_disk_is_restarted_and_its_job_failed(tmp_path: Path, disk: Path) -> None:
    agent = _agent(tmp_path, disk, ["disk.min_free_mib=0", "watchdog.restart_backoff_s=0.1"], hang_on_job=1)
    try:
        agent.wait_ready()
        r = agent.client.post("/v1/jobs", json={"prompt": "stuck"}, headers=auth(ALICE))
        job_id = r.json()["id"]
        worker = wait_for(lambda: next((w for w in status(agent)["workers"] if w["current_job"] == job_id), None),
                          30, "the job to run", agent)
        filler = fill(disk)
        os.kill(worker["pid"], 9)  # lost mid-job while the store cannot record the requeue
        wait_for(lambda: [e for e in events(agent, "ready") if e["incarnation"] == 1], 60,
                 "the lost worker's replacement", agent)
        assert events(agent, "restart")
        job = agent.wait_job(job_id, ALICE)
        assert job["status"] == "failed" and "worker lost" in job["error"]
        records = agent.client.get("/v1/failures", headers=auth(ADMIN))
        assert records.status_code == 200
        filler.unlink()
        r = agent.client.post("/v1/jobs", json={"prompt": "after"}, headers=auth(ALICE))
        assert agent.wait_job(r.json()["id"], ALICE)["status"] == "succeeded"
    finally:
        agent.stop()


def test_below_the_free_space_floor_new_jobs_get_507_naming_the_setting(tmp_path: Path, disk: Path) -> None:
    agent = _agent(tmp_path, disk, ["disk.min_free_mib=8"])
    try:
        agent.wait_ready()
        r = agent.client.post("/v1/jobs", json={"prompt": "room"}, headers=auth(ALICE))
        assert agent.wait_job(r.json()["id"], ALICE)["status"] == "succeeded"
        filler = fill(disk, leave_mib=4)
        refused = wait_for(lambda: (x := agent.client.post("/v1/jobs", json={"prompt": "p"}, headers=auth(ALICE)))
                           .status_code == 507 and x, 10, "a 507 below the floor", agent)
        message = refused.json()["error"]["message"]
        assert "disk.min_free_mib (8 MiB)" in message and str(disk) in message and "\n" not in message
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        ok = wait_for(lambda: (x := agent.client.post("/v1/jobs", json={"prompt": "q"}, headers=auth(ALICE)))
                      .status_code == 202 and x, 10, "jobs accepted again", agent)
        assert agent.wait_job(ok.json()["id"], ALICE)["status"] == "succeeded"
    finally:
        agent.stop()
