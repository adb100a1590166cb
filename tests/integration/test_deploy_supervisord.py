"""The standalone supervisord.conf under a real supervisord, without root:
it starts, answers supervisorctl over its 0700 socket, runs the program
through start.sh, and shuts down. The program is a stand-in agent (a tiny
HTTP server answering /livez and /readyz from the rendered config), so this
test does not depend on the real agent."""

from __future__ import annotations

import io
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zitops.deployment import deploy
from zitops.errors import ZitopsError
from zitops.progress import Progress

STAND_IN = """#!{python}
import http.server, sys, yaml
config = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/livez", "/readyz") else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((config["host"], config["port"]), Handler).serve_forever()
"""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def plan(tmp_path: Path) -> Iterator[deploy.Plan]:
    """A supervisor deployment whose program is the stand-in; supervisord is always stopped."""
    fake = tmp_path / "bin 50%" / "zitops"
    fake.parent.mkdir()
    fake.write_text(STAND_IN.format(python=sys.executable))
    fake.chmod(0o755)
    p = deploy.plan(deploy.DeployRequest(targets=("supervisor",), out=tmp_path / "d 50%",
                                         port=free_port(), zitops_bin=str(fake)))
    deploy.apply(p)
    yield p
    pidfile = p.out / "supervisord.pid"
    if pidfile.exists():
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(p.supervisord_conf),
                        "shutdown"], capture_output=True, timeout=30, check=False)
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def ctl(p: deploy.Plan, *args: str) -> subprocess.CompletedProcess[str]:
    """supervisorctl against the deployment's own socket."""
    return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(p.supervisord_conf), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_supervisord_runs_the_deployment_without_root(plan: deploy.Plan) -> None:
    messages: list[str] = []
    url = deploy.start(plan, timeout_s=30, echo=messages.append)
    assert url == f"http://127.0.0.1:{plan.config.port}"
    assert messages == [f"waiting for {url}/livez ...", f"waiting for {url}/readyz ..."]
    sock = plan.out / "supervisor.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o700
    status = ctl(plan, "status", "zitops")
    # STARTING until startsecs pass; either way supervisord answered over the socket.
    assert status.returncode == 0 and status.stdout.split()[0] == "zitops", status.stdout
    assert status.stdout.split()[1] in ("STARTING", "RUNNING"), status.stdout
    assert (plan.out / "logs" / "supervisord.log").exists()
    # The port is taken by this deployment's own agent: a second --start may go on (and restarts it),
    # while a deployment elsewhere on that port is refused before rendering.
    deploy.refuse_taken_port("127.0.0.1", plan.config.port, plan.out)
    with pytest.raises(ZitopsError, match=f"port {plan.config.port} on 127.0.0.1 is taken"):
        deploy.refuse_taken_port("127.0.0.1", plan.config.port, plan.out.parent / "elsewhere")
    # A second --start finds supervisord running and restarts the program in place.
    again: list[str] = []
    shown = io.StringIO()  # not a TTY: the wait is plain lines, one per probe passed, no bar
    assert deploy.start(plan, timeout_s=30, echo=again.append, progress=Progress(shown)) == url
    assert "already running" in again[0]
    lines = shown.getvalue().splitlines()
    assert "\r" not in shown.getvalue()
    assert lines[0] == f"waiting for {url} to be live and ready (2 probes) ..."
    assert f"waiting for {url} to be live and ready: /readyz: 200" in lines
    assert lines[-1].startswith(f"waiting for {url} to be live and ready: done (2/2, ")
    pid = int((plan.out / "supervisord.pid").read_text())
    stop = ctl(plan, "shutdown")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("supervisord did not exit after shutdown")
    assert not (plan.out / "supervisord.pid").exists()
