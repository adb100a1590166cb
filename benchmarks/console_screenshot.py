"""Take docs/console.png again: a real agent on the tiny model, a real job, Debian's Chromium.

    python3 benchmarks/console_screenshot.py [--out docs/console.png] [--chromium /usr/bin/chromium]

Starts ``zitops agent`` on 127.0.0.1 (a free port) with the real engine and
the tiny random model (built in a temporary state directory, seconds), waits
for ``/readyz``, runs one job through the API, then opens the console in
headless Chromium through playwright (``executable_path``; never ``playwright
install``), generates one image from the console's own form, waits for the
VRAM chart to have samples, and saves a full-page screenshot. The tiny model's
images are noise by design; the page shows what an operator sees on a CPU
host. Everything it started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zitops.bench.agent_http import free_port, stop_agent  # noqa: E402
from zitops.config import config_from_mapping, config_to_dict  # noqa: E402
from zitops.profile import load_profile  # noqa: E402

SETS = ["generation.width=256", "generation.height=256", "generation.steps=4", "engine.compile=false",
        "engine.precision=fp32", "engine.vae_precision=fp32", "watchdog.interval_s=1",
        "watchdog.heartbeat_timeout_s=60", "watchdog.standby_worker=false"]
PROMPT = "a ceramic coffee cup on a wooden table, natural lighting"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_S = 300
CLI = "import sys; from zitops.cli import main; sys.exit(main())"


def wait(predicate: Any, what: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    """Poll ``predicate`` until truthy, within WAIT_S; exit naming ``what`` (and the agent's log tail)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"console_screenshot: the agent exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    sys.exit(f"console_screenshot: timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def agent_config(tmp: Path, port: int) -> Path:
    """config.yaml of a loopback agent on the tiny model, everything under ``tmp``."""
    data = {"profile": load_profile("designer", SETS).model_dump(mode="json"), "port": port, "model": "tiny",
            "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config_from_mapping(data, "console screenshot"))))
    return path


def shoot(url: str, out: Path, chromium: str) -> None:
    """Open the console, generate one image from its form, wait for the chart, save the page."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="zitops-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1360, "height": 900}, service_workers="block")
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_S * 1000)
            page.goto(url + "/")
            page.wait_for_selector('select[name="sampler"] option[value="euler"]', state="attached")
            form = page.locator("#generate-form")
            form.locator('textarea[name="prompt"]').fill(PROMPT)
            form.locator('input[name="seed"]').fill("42")
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function("() => document.querySelector('#job-image').naturalWidth > 0")
            page.wait_for_selector('.chart:not([data-samples="0"]) canvas')
            page.wait_for_function("() => !document.querySelector('#summary').textContent.includes('connecting')")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            context.close()
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    """Start the agent, run a job, take the picture, stop the agent."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    ap.add_argument("--chromium", default=os.environ.get("ZITOPS_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    if not Path(args.chromium).is_file():
        sys.exit(f"console_screenshot: no Chromium at {args.chromium}; apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="zitops-console-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / "agent.out"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", CLI, "agent", "--config",
                                     str(agent_config(tmp, port))], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                wait(lambda: client.get("/readyz").status_code == 200, "/readyz", proc, log)
                job = client.post("/v1/jobs", json={"prompt": "a lighthouse at dusk", "seed": 7}).json()["id"]
                done = wait(lambda: (j := client.get(f"/v1/jobs/{job}").json())["status"] in
                            ("succeeded", "failed", "cancelled") and j, "the API job", proc, log)
                if done["status"] != "succeeded":
                    sys.exit(f"console_screenshot: the job {done['status']}: {done.get('error')}")
            shoot(url, args.out, args.chromium)
        finally:
            stop_agent(proc)
    print(f"console_screenshot: {args.out} ({args.out.stat().st_size} bytes) from {url}")


if __name__ == "__main__":
    main()
