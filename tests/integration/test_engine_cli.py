"""``zitops model`` and ``zitops generate`` as a user runs them, and the fault engine's process faults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.engine_support import png_text, tiny_model_dir


def zitops(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from zitops.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_make_tiny_then_check_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "m"
    made = zitops("model", "make-tiny", str(out))
    assert made.returncode == 0, made.stderr
    assert "tiny random model: images are noise" in made.stdout
    checked = zitops("model", "check", str(out))
    assert checked.returncode == 0 and "complete" in checked.stdout
    (out / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    broken = zitops("model", "check", str(out))
    assert broken.returncode != 0
    assert "vae/diffusion_pytorch_model.safetensors" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_generate_writes_a_batch_with_metadata_and_refuses_bad_input(tmp_path: Path) -> None:
    model = str(tiny_model_dir())
    out = tmp_path / "img" / "cat.png"
    ok = zitops("generate", "--prompt", "一只猫 a cat", "--model", model, "--width", "64", "--height", "64",
                "--steps", "2", "--seed", "40", "--batch", "2", "--sampler", "DPM++ 2M SDE Karras",
                "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "tiny random model: images are noise" in ok.stderr
    files = sorted(p.name for p in out.parent.iterdir())
    assert files == ["cat-0.png", "cat-1.png"]
    second = Image.open(out.parent / "cat-1.png")
    assert second.size == (64, 64)
    text = png_text(second)
    assert text["seed"] == "41" and text["sampler"] == "dpmpp_2m_sde" and text["schedule"] == "karras"
    assert text["prompt"] == "一只猫 a cat" and text["steps"] == "2"

    bad = tmp_path / "bad" / "x.png"
    for args, why in ((["--width", "72"], "multiple of 16"), (["--sampler", "DDIM"], "flow-matching")):
        refused = zitops("generate", "--prompt", "cat", "--model", model, "--out", str(bad), *args)
        assert refused.returncode != 0 and why in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not bad.parent.exists()

    missing = zitops("generate", "--prompt", "cat", "--model", str(tmp_path / "nowhere"), "--out", str(bad))
    assert missing.returncode != 0 and "--model PATH" in missing.stderr


_FAULT_JOB = """
import sys
from zitops.config import FaultSettings
from zitops.engine.faulty import FaultyEngine
from zitops.engine.request import GenerationRequest
e = FaultyEngine(FaultSettings(job_seconds=0, **{kw}), explicit=True)
e.setup("cpu")
req = GenerationRequest(prompt="x", seeds=(1,), width=64, height=64, steps=2)
for _ in range(3):
    e.generate(req)
    print("done", e.jobs, flush=True)
"""


def test_crash_on_job_exits_the_process() -> None:
    proc = subprocess.run([sys.executable, "-c", _FAULT_JOB.format(kw="{'crash_on_job': 2}")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout.split() == ["done", "1"]


def test_hang_on_job_never_finishes() -> None:
    # No logging is configured in the script, so the fault's error line reaches stderr through
    # logging's last-resort handler: the event that the process is inside the hang.
    proc = subprocess.Popen([sys.executable, "-c", _FAULT_JOB.format(kw="{'hang_on_job': 2}")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().split() == ["done", "1"]
        assert proc.stderr.readline().strip() == "fault: hanging on job 2"
        assert proc.poll() is None  # inside job 2, which only a kill ends
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.stdout.read() == "", "job 2 never finished"


def test_generate_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom zitops.commands.generate import generate\n"
            "r = CliRunner().invoke(generate, ['--help'])\nassert r.exit_code == 0 and '--arch' in r.output\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
