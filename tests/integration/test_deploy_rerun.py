"""``zitops deploy`` end to end through the CLI entry point: re-runs and the
manifest, user edits, refused inputs that leave --out untouched, and
--install into a staging root."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.cli_support import run_cli as run
from zitops.config import load_config
from zitops.deployment import deploy


def actions(stdout: str) -> dict[str, str]:
    """path -> action from the deploy report."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("created", "changed", "unchanged", "overwritten", "stale"):
            found[parts[1]] = parts[0]
    return found


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_first_run_writes_everything_with_a_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "d"
    code, stdout, err = run(capsys, "deploy", "--profile", "ecommerce", "--target", "all", "--out", str(out))
    assert code == 0, err
    written = actions(stdout)
    assert set(written.values()) == {"created"} and len(written) == 15
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == set(written)
    for rel, entry in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == entry["sha256"]
    assert (out / "start.sh").stat().st_mode & 0o777 == 0o755
    for d in ("state", "logs", "outputs", "cache"):
        assert (out / d).is_dir()
    assert "supervisord -c" in stdout and "kubectl apply -k" in stdout and "monitoring (prometheus-operator" in stdout


def test_rerun_is_byte_identical_and_reports_changes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "d"
    argv = ("deploy", "--profile", "designer", "--out", str(out))
    assert run(capsys, *argv)[0] == 0
    before = snapshot(out)
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and set(actions(stdout).values()) == {"unchanged"}
    assert snapshot(out) == before
    code, stdout, _ = run(capsys, *argv, "--port", "7861")
    changed = {p for p, a in actions(stdout).items() if a == "changed"}
    assert changed == {"config.yaml", "k8s/configmap.yaml", "k8s/deployment.yaml", "k8s/service.yaml"}
    code, stdout, _ = run(capsys, *argv, "--port", "7861", "--target", "systemd")
    assert actions(stdout)["k8s/service.yaml"] == "stale" and (out / "k8s" / "service.yaml").exists()


def test_user_edits_are_kept_unless_forced(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert run(capsys, "deploy", "--out", str(out))[0] == 0
    edited = out / "supervisor" / "zitops.conf"
    edited.write_text(edited.read_text() + "; my note\n")
    before = snapshot(out)
    code, stdout, err = run(capsys, "deploy", "--out", str(out), "--port", "9000")
    assert code == 1 and stdout == ""
    assert len(err.splitlines()) == 1 and "supervisor/zitops.conf" in err and "--force" in err
    assert snapshot(out) == before  # nothing at all was written, not even the unedited files
    code, stdout, _ = run(capsys, "deploy", "--out", str(out), "--port", "9000", "--force")
    assert code == 0 and actions(stdout)["supervisor/zitops.conf"] == "overwritten"
    assert "; my note" not in edited.read_text()


def test_unknown_files_in_the_way_are_not_overwritten(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "config.yaml").write_text("mine: true\n")
    code, _, err = run(capsys, "deploy", "--out", str(out))
    assert code == 1 and "config.yaml" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--host", "a;rm -rf /"), "not an IP address or a hostname"),
        (("--host", "0.0.0.0"), "auth.tokens_file"),
        (("--set", "generation.negative_prompt=a\nb"), "newline"),
        (("--set", "generation.negative_prompt=bidi \u202e x"), "U+202E"),
        (("--set", "generation.steps=0"), "generation.steps"),
        (("--set", "engine.precision=fp8"), "engine.precision"),
        (("--gpus", "0;1"), "--gpus"),
        (("--model", "/srv/we\x00ights"), "NUL"),
        (("--profile", "nope"), "unknown profile"),
        (("--root", "/tmp/x"), "--root only applies together with --install"),
    ],
)
def test_refused_deploys_leave_out_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: tuple[str, ...], expected: str
) -> None:
    out = tmp_path / "never"
    code, stdout, err = run(capsys, "deploy", "--out", str(out), *argv)
    assert code != 0 and stdout == ""
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not out.exists()


def test_awkward_values_are_quoted_not_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    value = "50% off, \"quoted\" 'single' $(reboot) `id` ; # &"
    out = tmp_path / "d"
    code, _, err = run(capsys, "deploy", "--out", str(out), "--set", f"generation.negative_prompt={value}")
    assert code == 0, err
    assert load_config(out / "config.yaml").profile.generation.negative_prompt == value


def test_install_into_a_staging_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out, root = tmp_path / "d", tmp_path / "stage"
    argv = ("deploy", "--profile", "lowvram", "--out", str(out), "--install", "--root", str(root))
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    placed = {
        "etc/zitops/config.yaml": "config.yaml",
        "usr/local/libexec/zitops/start.sh": "start.sh",
        "etc/supervisor/conf.d/zitops.conf": "supervisor/zitops.conf",
        f"etc/systemd/system/{deploy.UNIT_NAME}": f"systemd/{deploy.UNIT_NAME}",
    }
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == set(placed)
    for staged, rendered in placed.items():
        assert (root / staged).read_bytes() == (out / rendered).read_bytes()
    assert os.stat(root / "usr/local/libexec/zitops/start.sh").st_mode & 0o777 == 0o755
    assert "/var/lib/zitops" in (root / "etc/zitops/config.yaml").read_text()
    lines = [line.strip() for line in stdout.splitlines()]
    assert f"systemd: systemctl daemon-reload && systemctl enable --now {deploy.UNIT_NAME}" in lines
    assert "supervisor: supervisorctl reread && supervisorctl update" in lines
    assert f"kubernetes: kubectl apply -k {out / 'k8s'}" in lines
    # A re-run changes nothing; an admin's edit of an installed file is kept.
    code, stdout, _ = run(capsys, *argv)
    assert set(actions(stdout).values()) == {"unchanged"}
    (root / "etc/zitops/config.yaml").write_text("edited: true\n")
    code, _, err = run(capsys, *argv, "--port", "7000")
    assert code == 1 and str(root / "etc/zitops/config.yaml") in err


def test_start_says_plainly_when_the_agent_is_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy, "agent_available", lambda: False)  # a build before the agent issue
    out = tmp_path / "d"
    code, _, err = run(capsys, "deploy", "--out", str(out), "--start")
    assert code != 0 and "agent is not available yet" in err and len(err.splitlines()) == 1
    assert not out.exists()
