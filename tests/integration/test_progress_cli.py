"""The CLI's long waits: a bar on a terminal, plain lines in a pipe; deploy --start refuses a taken port."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
from pathlib import Path

from zitops.progress import Progress

CLI = "import sys; from zitops.cli import main; sys.exit(main())"


def zitops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter with its output to pipes."""
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=180,
                          env=env, check=False)


def on_a_terminal(*args: str) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal; everything it wrote."""
    main, child = pty.openpty()
    # A fresh pty is 0x0 until someone sizes it, as a terminal emulator would.
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdin=subprocess.DEVNULL, stdout=child,
                            stderr=child, env=env)
    os.close(child)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 180)
            if not ready:
                break
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0, b"".join(chunks).decode("utf-8", "replace")[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return b"".join(chunks).decode("utf-8", "replace")


def test_make_tiny_in_a_pipe_prints_plain_lines(tmp_path: Path) -> None:
    proc = zitops("model", "make-tiny", str(tmp_path / "tiny"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr
    phase = "writing the tiny model"
    assert proc.stderr.splitlines() == [
        f"{phase} (3 steps) ...",
        f"{phase}: building the random weights",
        f"{phase}: saving the pipeline",
        f"{phase}: writing the tiny VAE",
        proc.stderr.splitlines()[-1],
    ]
    assert proc.stderr.splitlines()[-1].startswith(f"{phase}: done (3/3, ")
    assert proc.stdout.startswith(f"wrote {tmp_path / 'tiny'}")


def test_make_tiny_on_a_terminal_draws_a_bar(tmp_path: Path) -> None:
    shown = on_a_terminal("model", "make-tiny", str(tmp_path / "tiny"))
    # tqdm redraws in place with carriage returns and ends full: "100%|█████| 3/3".
    assert "\r" in shown
    assert "100%|" in shown and "| 3/3 [" in shown, shown[-2000:]
    assert "done (3/3" not in shown  # the plain-line form is for pipes only


def test_progress_in_a_pipe_prints_a_state_once() -> None:
    out = io.StringIO()
    with Progress(out) as progress:
        progress.phase("waiting", total=2, unit="probe")
        for state in ("STARTING", "STARTING", "RUNNING", "RUNNING"):
            progress.state(state)
        progress.advance(2)
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["waiting (2 probes) ...", "waiting: STARTING", "waiting: RUNNING"]
    assert len(lines) == 4 and lines[3].startswith("waiting: done (2/2, ")


def test_deploy_start_refuses_a_taken_port_and_renders_nothing(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = zitops("deploy", "--model", "tiny", "--out", str(out), "--port", str(port), "--start")
    assert proc.returncode != 0
    assert f"port {port} on 127.0.0.1 is taken" in proc.stderr and "--port N" in proc.stderr, proc.stderr
    assert not out.exists()  # nothing rendered, so nothing started
    assert "supervisord" not in proc.stdout
