"""``zitops drill KIND`` through the CLI, against real agent and worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow
CLI = "import sys; from zitops.cli import main; sys.exit(main())"


def _drill(*args: str, tmpdir: Path | None = None, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if tmpdir is not None:
        tmpdir.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-c", CLI, "drill", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it no longer runs.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def _assert_torn_down(report: dict[str, Any]) -> None:
    assert report["agent_pid"] and _gone(report["agent_pid"]), "the drill left its agent running"
    assert report["worker_pids"], "no worker pid was observed"
    for pid in report["worker_pids"]:
        assert _gone(pid), f"the drill left worker {pid} running"


@pytest.mark.parametrize("kind", ["crash", "leak", "hang", "oom", "kill"])
def test_each_drill_passes_with_no_job_lost(kind: str, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    proc = _drill(kind, "--json", tmpdir=tmp)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert report["ok"] and report["kind"] == kind
    assert all(c["ok"] for c in report["checks"]) and len(report["checks"]) >= 5
    assert report["jobs"]["lost"] == 0 and report["jobs"]["accepted"] == report["jobs"]["submitted"] > 0
    # The hang drill's hung job is killed for passing its timeout and failed, not run again (issue 12).
    timed_out = 1 if kind == "hang" else 0
    assert report["jobs"]["succeeded"] == report["jobs"]["accepted"] - timed_out
    assert len(report["jobs"]["failed"]) == timed_out
    fig = report["figures"]
    events = report["events"]

    def recovered_after(kind_: str) -> dict[str, Any]:
        """The recorded recovery ("ready", with how long the slot was down) after the first ``kind_``."""
        first = next(e for e in events if e["kind"] == kind_)
        return next(e for e in events if e["kind"] == "ready" and e["time"] >= first["time"])

    if kind == "crash":
        assert fig["crash_to_ready_s"] == recovered_after("crash")["recovery_s"] > 0
        assert len(report["jobs"]["retried"]) == 1
        assert report["metrics"]['zitops_recoveries_total{kind="crash"}'] >= 1
    elif kind == "leak":
        # 100 MiB/job, threshold 150 over the baseline of job 1, 2 jobs in a row: recycled after job 4.
        assert fig["leak_jobs_until_recycle"] == 4
        (recycle,) = [e for e in events if e["kind"] == "recycle"]
        (handover,) = [e for e in events if e["kind"] == "handover"]
        assert fig["leak_recycled_to_ready_s"] == handover["warmup_s"] > 0
        assert fig["allocated_after_mib"] < fig["leak_allocated_at_recycle_mib"]
        # The successor warmed while the old worker served: the recorded transitions show no
        # moment without a worker (no crash, kill, restart or recovery; the handover had no gap).
        assert fig["leak_overlap"] is True and recycle["overlap"] is True
        assert fig["leak_gap_s"] == handover["gap_s"] == 0.0 and handover["new_pid"] == recycle["successor_pid"]
        assert not [e for e in events if e["kind"] in ("crash", "kill", "restart", "ready")], events
    elif kind == "hang":
        assert fig["hang_detected_to_replaced_s"] == recovered_after("kill")["recovery_s"] > 0
        assert any(e["kind"] == "kill" and "past its 2s timeout" in e["reason"] for e in events)
    elif kind == "oom":
        assert fig["oom_splits_per_job"] == [3]  # 4 -> 2+2 -> 1+1+1+1
        assert not report["jobs"]["retried"]
    else:
        assert fig["killed_pid"] in report["worker_pids"]
        assert fig["kill_to_ready_s"] == recovered_after("crash")["recovery_s"] > 0
        assert report["jobs"]["retried"] == [fig["killed_job"]]
    _assert_torn_down(report)
    assert list(tmp.iterdir()) == [], "the temporary deployment was not removed"


def test_the_real_leak_drill_holds_real_memory_in_the_diffusers_engine_and_recycles(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    proc = _drill("leak", "--real", "--jobs", "5", "--json", tmpdir=tmp, timeout=240)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert report["ok"] and report["jobs"]["lost"] == 0 and report["jobs"]["succeeded"] == 5
    fig = report["figures"]
    # No GPU here: the allocator's rule caught real bytes (32 MiB a job, 48 over job 1's baseline, 2 in a row).
    (recycle,) = [e for e in report["events"] if e["kind"] == "recycle"]
    assert recycle["policy"] == "leak" and fig["leak_jobs_until_recycle"] == 4
    assert recycle["allocated_mib"] == 4 * 32 and fig["peak_allocated_mib"] >= 4 * 32
    assert fig["allocated_after_mib"] < fig["leak_allocated_at_recycle_mib"]
    _assert_torn_down(report)
    # torch's own inductor scratch directory may appear under TMPDIR; the deployment must not remain.
    assert [p.name for p in tmp.iterdir() if p.name.startswith("zitops-drill-")] == []


def test_keep_leaves_the_rendered_deployment(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    proc = _drill("oom", "--jobs", "2", "--keep", str(keep))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stdout.startswith("drill oom: PASS")
    assert f"{keep} (kept)" in proc.stdout
    config = yaml.safe_load((keep / "config.yaml").read_text())
    assert config["engine"]["kind"] == "faulty" and config["engine"]["faults"]["oom_above_batch"] == 1
    assert config["host"] == "127.0.0.1"
    assert (keep / "state" / "jobs.sqlite3").is_file()
    assert "out of memory" in (keep / "agent.out").read_text()  # the split, logged by the worker


def test_a_drill_whose_expectation_fails_exits_1(tmp_path: Path) -> None:
    # Two jobs cannot show a leak that needs four: the drill must say so, not pass.
    proc = _drill("leak", "--jobs", "2", tmpdir=tmp_path / "tmp")
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout.startswith("drill leak: FAIL")
    assert "FAIL the leak was detected (a leak recycle): no recycle in 2 jobs" in proc.stdout
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(("args", "needle"), [
    (["bogus"], "unknown kind 'bogus'; use one of leak, crash, hang, oom, kill"),
    (["crash", "--jobs", "0"], "--jobs 0: give 1..200"),
    (["crash", "--timeout", "-1"], "--timeout -1: give a positive number of seconds"),
    (["crash", "--real"], "--real: only the leak drill has a real mode, not 'crash'"),
])
def test_bad_input_is_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    proc = _drill(*args, tmpdir=tmp_path / "tmp", timeout=30)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert list((tmp_path / "tmp").iterdir()) == []


def _agents_under(root: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(root) in cmd and " agent --config " in cmd and not _gone(int(p.name)):
                pids.append(int(p.name))
    return pids


@pytest.mark.parametrize("when", ["spawned", "mid-drill"])
def test_sigterm_to_the_drill_tears_the_agent_down(when: str, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    drill = subprocess.Popen([sys.executable, "-c", CLI, "drill", "kill", "--jobs", "20"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _agents_under(tmp) and time.monotonic() < deadline:
            assert drill.poll() is None, drill.communicate()
            time.sleep(0.1)
        agents = _agents_under(tmp)
        assert agents, "the drill's agent never started"
        if when == "mid-drill":  # jobs are flowing: the drill's agent has written an image
            deadline = time.monotonic() + 60
            while not list(tmp.rglob("*.png")) and time.monotonic() < deadline:
                assert drill.poll() is None, drill.communicate()
                time.sleep(0.05)
            assert list(tmp.rglob("*.png")), "the drill never got an image back"
        drill.send_signal(signal.SIGTERM)
        drill.wait(60)
    finally:
        if drill.poll() is None:
            drill.kill()
            drill.wait(10)
    assert drill.returncode != 0
    assert all(_gone(pid) for pid in agents), "SIGTERM to the drill left its agent running"
    assert list(tmp.iterdir()) == []
