"""``deploy --start`` checks before it starts anything, and doctor knows a running deployment.

A bad tokens file (world-readable, missing, a short token) is refused by name
before a file is written or a process started; doctor names it too. A good
deployment started by the real CLI (real supervisord, real agent, the tiny
pipeline) passes doctor with no flags from its project directory: the port is
its own agent's, and the live checks ask that agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_support import tiny_model_dir
from tests.runtime_support import link_tiny_model

CLI = "import sys; from zitops.cli import main; sys.exit(main())"
GOOD = "preflight-token-0123456789abcdef"
FAST = ["generation.width=64", "generation.height=64", "generation.steps=2", "engine.compile=false",
        "engine.precision=fp32", "engine.vae_precision=fp32", "queue.drain_timeout_s=5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zitops(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZITOPS_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def tokens(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("text", "mode", "said"), [
    (f"{GOOD}\n", 0o644, "readable or writable by other users"),
    ("short\n", 0o600, "too short"),
    (None, 0o600, "does not exist"),
])
def test_a_bad_tokens_file_is_refused_before_anything_starts(tmp_path: Path, text: str | None, mode: int,
                                                              said: str) -> None:
    secret = tmp_path / "tokens"
    if text is not None:
        tokens(secret, text, mode)
    out = tmp_path / "deploy"
    run = zitops(tmp_path, "deploy", "--out", str(out), "--port", str(free_port()), "--start",
                 "--set", f"auth.tokens_file={secret}", *(f"--set={s}" for s in FAST))
    assert run.returncode != 0
    line = run.stderr.strip().splitlines()[-1]
    assert "--start refused before anything started: tokens file:" in line and said in line, run.stderr
    # Nothing written, nothing running.
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_doctor_names_a_bad_tokens_file(tmp_path: Path) -> None:
    secret = tokens(tmp_path / "tokens", f"{GOOD}\n", 0o644)
    out = tmp_path / "deploy"
    rendered = zitops(tmp_path, "deploy", "--out", str(out), "--port", str(free_port()), "--target", "supervisor",
                      "--set", f"auth.tokens_file={secret}")
    assert rendered.returncode == 0, rendered.stderr
    proc = zitops(tmp_path, "doctor", "--json")  # finds ./deploy/config.yaml
    assert proc.returncode != 0
    assert "./deploy/config.yaml" in proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["tokens file"]["ok"] is False and "chmod 600" in checks["tokens file"]["detail"]
    secret.chmod(0o600)
    checks = {c["name"]: c for c in json.loads(zitops(tmp_path, "doctor", "--json").stdout)["checks"]}
    assert checks["tokens file"] == {"name": "tokens file", "ok": True,
                                     "detail": f"{secret}: 1 token(s), 0 admin"}


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_model_dir()


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "named"), [
    (lambda m: (m / "transformer" / "diffusion_pytorch_model.safetensors").unlink(),
     "transformer/diffusion_pytorch_model.safetensors"),
    (lambda m: _truncate(m / "text_encoder" / "model.safetensors"), "text_encoder/model.safetensors (truncated"),
])
def test_incomplete_model_files_are_refused_before_anything_starts(tmp_path: Path, tiny: Path, damage: object,
                                                                    named: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    damage(model)  # type: ignore[operator]
    out = tmp_path / "deploy"
    try:
        run = zitops(tmp_path, "deploy", "--out", str(out), "--port", str(free_port()), "--start", "--model",
                     str(model), "--target", "supervisor", *(f"--set={s}" for s in FAST), timeout=60)
    finally:  # a check that let it through started supervisord: stop it
        if (out / "supervisord.conf").exists():
            subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(out / "supervisord.conf"),
                            "shutdown"], capture_output=True, timeout=60, check=False)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and str(model) in lines[0], run.stderr
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # nothing written, nothing started
    doctor = zitops(tmp_path, "doctor", "--json", "--model", str(model), "--port", str(free_port()))
    assert doctor.returncode != 0
    check = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["model"]
    assert check["ok"] is False and named in check["detail"], check


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """README command 1 on a free port (not 7860) with a tokens file; supervisord always shut down."""
    secret = tokens(tmp_path / "tokens", f"admin:{GOOD}\n", 0o600)
    link_tiny_model(tmp_path / "deploy" / "state")
    run = zitops(tmp_path, "deploy", "--out", "deploy", "--port", str(free_port()), "--start", "--target",
                 "supervisor", "--set", f"auth.tokens_file={secret}", *(f"--set={s}" for s in FAST), timeout=300)
    try:
        yield tmp_path, run
    finally:
        conf = tmp_path / "deploy" / "supervisord.conf"
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "shutdown"],
                       capture_output=True, timeout=60, check=False)
        pidfile = tmp_path / "deploy" / "supervisord.pid"
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


@pytest.mark.slow
def test_doctor_on_the_running_deployment_passes_with_live_checks(
        started: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, run = started
    assert run.returncode == 0, run.stderr
    # The start is done: no "start: supervisord ..." among the next steps afterwards.
    assert "supervisord -c" not in run.stdout and "agent ready at" in run.stdout, run.stdout
    proc = zitops(root, "doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["port"]["ok"] and "this deployment's own agent" in checks["port"]["detail"]
    assert checks["readyz"] == {"name": "readyz", "ok": True, "detail": "ready"}
    assert checks["workers"]["ok"] and checks["workers"]["detail"].startswith("1 of 1 serving")
    assert checks["vram"]["detail"] == "n/a (CPU workers)"
    assert checks["recent failures"]["ok"]
    # Every file the deployment made is 0640 or tighter: the config and supervisord's own log too.
    for name in ("deploy/config.yaml", "deploy/logs/supervisord.log"):
        assert (root / name).stat().st_mode & 0o777 == 0o640, name
