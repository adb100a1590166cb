"""``zitops deploy --start``: launch the standalone supervisord and wait for the agent's probes.

The probes (/livez, /readyz) answer without a token and without the Host
check, so the wait works the same for an agent with a tokens file.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from zitops.deployment.deploy_types import STOP_MARGIN_S, Plan
from zitops.errors import AgentUnavailable, ZitopsError
from zitops.progress import Progress


def agent_available() -> bool:
    """True when this build has the agent command (it lands in its own issue)."""
    return importlib.util.find_spec("zitops.commands.agent") is not None


def refuse_taken_port(host: str, port: int, out: Path) -> None:
    """Refuse ``--start`` before anything is rendered when ``host:port`` is taken (doctor's port check).

    The port may be taken by this very deployment: its supervisord still runs from
    ``out``, and :func:`start` restarts that agent in place. The model, deploy's other
    hard check, is refused by planning (``deploy_plan``).
    """
    from zitops.preflight.doctor_checks import check_port

    found = check_port(host, port)
    if found.ok:
        return
    conf = Path(os.path.abspath(out.expanduser())) / "supervisord.conf"
    if conf.exists() and _supervisorctl(conf, "pid").returncode == 0:
        return
    raise ZitopsError(f"--start: {found.detail}; {found.fix}")


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise ZitopsError(f"cannot find {name}: install the project's dependencies (pip install -e .)")
    return found


def _supervisorctl(conf: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [_tool("supervisorctl"), "-c", str(conf), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _ctl(p: Plan, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return _supervisorctl(p.supervisord_conf, *args, timeout=timeout)


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL we built
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def start(p: Plan, timeout_s: float = 600.0, echo: Callable[[str], None] = print,
          progress: Progress | None = None) -> str:
    """Launch the standalone supervisord from --out and wait until the agent is ready.

    The limit allows for a cold compile and the warm-up before Ready on a GPU; the wait
    polls, so it returns as soon as the agent is ready. ``progress`` shows the wait as two
    steps (live, ready) with supervisor's state of the agent; without it, ``echo`` gets a line
    per probe.
    """
    conf = str(p.supervisord_conf)
    if not p.supervisord_conf.exists():
        raise ZitopsError(f"{conf} is missing: --start needs the supervisor target")
    started_here = _ctl(p, "pid").returncode != 0
    if not started_here:
        echo("supervisord is already running for this deployment: restarting the agent")
        _ctl(p, "reread")
        _ctl(p, "update")
        _ctl(p, "restart", "zitops", timeout=p.config.profile.queue.drain_timeout_s + STOP_MARGIN_S + 10)
    else:
        # supervisord opens its own log before it applies the conf's umask=027: start it under that umask.
        run = subprocess.run([_tool("supervisord"), "-c", conf], capture_output=True, text=True,
                             timeout=30, check=False, umask=0o027)
        if run.returncode != 0:
            last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ZitopsError(f"supervisord -c {conf} failed: {last[0]}")
    try:
        _wait(p, timeout_s, echo, progress)
    except AgentUnavailable as exc:
        if not started_here:
            raise
        # This command started supervisord: a failed start leaves nothing running.
        _ctl(p, "shutdown", timeout=p.config.profile.queue.drain_timeout_s + STOP_MARGIN_S + 10)
        raise AgentUnavailable(f"{exc}; supervisord was stopped, nothing is left running") from None
    return p.base_url


def _wait(p: Plan, timeout_s: float, echo: Callable[[str], None], progress: Progress | None) -> None:
    """Poll /livez then /readyz until 200; AgentUnavailable when the agent gives up or time runs out."""
    conf = str(p.supervisord_conf)
    deadline = time.monotonic() + timeout_s
    if progress is not None:
        progress.phase(f"waiting for {p.base_url} to be live and ready", total=2, unit="probe")
    for path in ("/livez", "/readyz"):
        url = p.base_url + path
        if progress is None:
            echo(f"waiting for {url} ...")
        while _get(url) != 200:
            state = _ctl(p, "status", "zitops").stdout.split()
            if progress is not None and len(state) > 1:
                progress.state(f"{path}: agent {state[1]}")
            if len(state) > 1 and state[1] in ("FATAL", "EXITED", "BACKOFF"):
                raise AgentUnavailable(
                    f"the agent is {state[1]}; see {p.config.paths.log_dir}/supervisor-stdout.log "
                    "(zitops logs --level error)"
                )
            if time.monotonic() > deadline:
                raise AgentUnavailable(
                    f"{url} did not answer 200 within {timeout_s:.0f} s; see {p.config.paths.log_dir} "
                    f"(supervisorctl -c {shlex.quote(conf)} status)"
                )
            time.sleep(0.5)
        if progress is not None:
            progress.advance()
            progress.state(f"{path}: 200")
    if progress is not None:
        progress.close()
