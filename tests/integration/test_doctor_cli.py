"""``zitops doctor`` end to end, each run in a fresh interpreter, on this CPU host with the tiny model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.engine_support import tiny_model_dir
from tests.runtime_support import runtime_config
from zitops.config import config_to_dict

CLI = "import sys; from zitops.cli import main; sys.exit(main())"
HEAVY_PROBE = """
import json, sys
from zitops.cli import main
try:
    main(["doctor", "--help"])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps([m for m in ("torch", "diffusers", "pynvml", "transformers") if m in sys.modules]))
"""


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``zitops doctor ARGS`` in a new interpreter."""
    return subprocess.run([sys.executable, "-c", CLI, "doctor", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_all_good_with_the_tiny_model_exits_0_and_the_json_parses(tmp_path: Path) -> None:
    proc = doctor("--model", str(tiny_model_dir()), "--port", str(free_port()),
                  "--out", str(tmp_path / "deploy"), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert all(set(c) >= {"name", "ok", "detail"} for c in report["checks"])
    for name in ("torch", "nvml", "gpus", "model", "state dir", "log dir", "disk for outputs",
                 "disk for cache", "port", "supervisor", "compile cache"):
        assert checks[name]["ok"] is True, (name, checks[name])
    assert "complete" in checks["model"]["detail"] and "tiny" in checks["model"]["detail"]
    # This host has no GPU: with the tiny model that is a warning, not a failure.
    assert checks["gpus"].get("warning") is True


def test_missing_model_fails_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    proc = doctor("--model", str(missing), "--port", str(free_port()), "--out", str(tmp_path / "deploy"))
    assert proc.returncode != 0
    model_line = next(line for line in proc.stdout.splitlines() if line.split()[1:2] == ["model"])
    assert model_line.lstrip().startswith("FAIL") and str(missing) in model_line
    assert "fix: download a diffusers-format Z-Image-Turbo snapshot" in proc.stdout
    assert str(missing) in proc.stderr and "model" in proc.stderr


def test_a_taken_port_from_the_config_fails_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = runtime_config(tmp_path, port=port, model=str(tiny_model_dir()))
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(config_to_dict(cfg)))
        proc = doctor("--config", str(config), "--json")
    assert proc.returncode != 0
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    failed = [name for name, c in checks.items() if not c["ok"]]
    assert failed == ["port"], failed
    assert f"port {port} on 127.0.0.1 is taken" in checks["port"]["detail"]
    assert "--port" in checks["port"]["fix"]
    assert f"port {port}" in proc.stderr
    # The config's own paths were checked, not deploy's default layout.
    assert str(tmp_path / "state_dir") in checks["state dir"]["detail"]


def test_doctor_help_imports_no_gpu_stack() -> None:
    proc = subprocess.run([sys.executable, "-c", HEAVY_PROBE], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_hard_failures_for_deploy_name_the_model_path_and_the_port(tmp_path: Path) -> None:
    from zitops.preflight.doctor import hard_failures

    assert hard_failures(str(tiny_model_dir()), tmp_path, "127.0.0.1", free_port(), start=True) == []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Without --start the port is not deploy's business.
        assert hard_failures("tiny", tmp_path, "127.0.0.1", port, start=False) == []
        failed = hard_failures(str(tmp_path / "gone"), tmp_path, "127.0.0.1", port, start=True)
    assert [c.name for c in failed] == ["model", "port"]
    assert str(tmp_path / "gone") in failed[0].detail and f"port {port}" in failed[1].detail


def test_fast_decode_is_checked_against_the_autoencoder_on_disk(tmp_path: Path) -> None:
    from zitops.engine.tiny import TINY_VAE_DIR

    tae, kl = tiny_model_dir() / TINY_VAE_DIR, tiny_model_dir() / "vae"
    seen = {}
    for name, sets in {"tae": [f"engine.tiny_vae_path={tae}"], "none": [],
                       "kl": [f"engine.tiny_vae_path={kl}"]}.items():
        cfg = runtime_config(tmp_path / name, port=free_port(), model=str(tiny_model_dir()),
                             sets=["engine.vae_decode=fast", *sets])
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(config_to_dict(cfg)))
        proc = doctor("--config", str(config), "--json")
        seen[name] = (proc.returncode, {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["fast decode"])
    assert seen["tae"][0] == 0 and seen["tae"][1]["ok"] and not seen["tae"][1].get("warning")
    assert seen["none"][0] == 0 and seen["none"][1]["warning"] is True
    assert "falls back to tiled decode" in seen["none"][1]["detail"] and "tiny_vae_path" in seen["none"][1]["fix"]
    assert seen["kl"][0] != 0 and seen["kl"][1]["ok"] is False
    assert "AutoencoderKL with 16 latent channels" in seen["kl"][1]["detail"]
