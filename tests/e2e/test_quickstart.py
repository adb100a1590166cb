"""The README's first command, end to end: deploy the ecommerce profile, start
the agent under the standalone supervisord, and call it with the seed
article's curl body. Real supervisord, real agent, real spawned worker running
the tiny pipeline; everything is shut down afterwards."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

# Section 2.3 of the seed article, byte for byte.
SEED_BODY = '{ "prompt": "a ceramic coffee cup on a wooden table, natural lighting", "steps": 8, "scheduler": "simple", "cfg_scale": 7.0 }'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _zitops() -> list[str]:
    exe = Path(sys.executable).parent / "zitops"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "zitops.cli"]


def _supervisorctl(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    beside = Path(sys.executable).parent / "supervisorctl"
    exe = str(beside) if beside.exists() else shutil.which("supervisorctl")
    assert exe, "supervisorctl is not installed"
    return subprocess.run([exe, "-c", str(conf), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _kill_leftovers(out: Path) -> None:
    for pidfile in out.rglob("supervisord.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def test_readme_quickstart_deploy_start_and_seed_curl(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    port = _free_port()
    conf = out / "supervisord.conf"
    try:
        run = subprocess.run(
            [*_zitops(), "deploy", "--profile", "ecommerce", "--out", str(out),
             "--port", str(port), "--start"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert run.returncode == 0, run.stderr
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=180) as client:
            assert client.get("/readyz").status_code == 200
            resp = client.post("/sdapi/v1/txt2img", content=SEED_BODY,
                               headers={"Content-Type": "application/json"})
            assert resp.status_code == 200, resp.text
            assert resp.headers["cache-control"] == "no-store"
            assert resp.headers["x-content-type-options"] == "nosniff"
            body = resp.json()
            assert len(body["images"]) == 1
            image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
            # The ecommerce profile's size, since the body names none.
            assert image.format == "PNG" and image.size == (896, 896)
            info = json.loads(body["info"])
            assert info["steps"] == 8
            status = client.get("/status").json()
            assert status["profile"] == "ecommerce"
            assert any(w["state"] in ("ready", "busy") for w in status["workers"])
        stop = _supervisorctl(conf, "shutdown")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base}/livez", timeout=1)
            except httpx.HTTPError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the agent still answers after supervisord shutdown")
    finally:
        if conf.exists():
            _supervisorctl(conf, "shutdown")
        _kill_leftovers(out)
