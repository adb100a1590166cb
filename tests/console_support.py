"""Test support for the console tests: Debian's Chromium driven by playwright, and a real agent.

Nothing is downloaded at run time: playwright drives the system's
``/usr/bin/chromium`` (never ``playwright install``). A machine without it
fails these tests with the install line, because a skip would let CI pass
without ever opening the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.runtime_support import runtime_config, wait_until
from zitops.config import config_to_dict

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
INSTALL_HINT = ("Debian's chromium is not installed; run: apt-get update && apt-get install -y chromium "
                "(.ci/run does this where it is missing; never `playwright install`)")
CLI = "import sys; from zitops.cli import main; sys.exit(main())"


def chromium_path() -> str:
    """The system Chromium, or a test failure that says how to install it."""
    found = os.environ.get("ZITOPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).is_file():
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium context with a fresh profile directory (removed afterwards)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed; run: pip install -e '.[test]'", pytrace=False)
    exe = chromium_path()
    profile = tempfile.mkdtemp(prefix="zitops-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=exe, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1360, "height": 900}, service_workers="block",
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Outside:
    """Every request a page makes; those that would leave ``base`` are aborted and kept."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/") + "/"
        self.seen: list[str] = []
        self.left: list[str] = []

    def attach(self, page: Any) -> None:
        """Route every request of ``page`` through this filter."""
        page.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.seen.append(url)
        if url.startswith(self.base) or url.startswith(("blob:", "data:")):
            route.continue_()
        else:
            self.left.append(url)
            route.abort()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def real_agent(tmp: Path, model: Path, **faults: Any) -> Iterator[str]:
    """``zitops agent --config`` in its own session: the fault engine around the tiny pipeline."""
    port = free_port()
    cfg = runtime_config(tmp, port=port, model=str(model),
                         faults={"inner": "diffusers", "job_seconds": 0.0, **faults})
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    log = (tmp / "agent.out").open("ab")
    proc = subprocess.Popen([sys.executable, "-c", CLI, "agent", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"agent exited with {proc.returncode}; see {tmp / 'agent.out'}"
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url + "/readyz", timeout=5).status_code == 200
            return False

        wait_until(ready, 180, interval=0.2, what="agent readiness")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers and spares that outlived it
        log.close()
