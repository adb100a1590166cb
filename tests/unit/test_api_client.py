"""``zitops status`` and ``zitops health`` against a real server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import MemService, free_port, make_config, serve
from zitops.cli import main

TOKEN = "client-token-0123456789abcdef"
OTHER = "tenant-token-0123456789abcdef"


@pytest.fixture(scope="module")
def svc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemService, str]]:
    tmp = tmp_path_factory.mktemp("client")
    svc = MemService(tmp / "out")
    with serve(make_config(tmp), svc, frozenset({TOKEN, OTHER}), admin_tokens=frozenset({TOKEN})) as url:
        yield svc, url


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_status_table_and_json(svc_url: tuple[MemService, str], capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZITOPS_TOKEN", TOKEN)
    code, out, _ = run(["status", "--url", svc_url[1]], capsys)
    assert code == 0
    assert "profile   designer" in out
    assert "WORKER" in out and "4242" in out and "2.0G/16.0G (sim)" in out
    assert "recent failures: 1" in out and "EngineError: boom" in out
    assert "recoveries: 1" in out and "crashed" in out
    code, out, _ = run(["status", "--url", svc_url[1], "--json"], capsys)
    assert code == 0
    assert json.loads(out)["workers"][0]["pid"] == 4242


def test_health_exit_codes(svc_url: tuple[MemService, str], capsys: pytest.CaptureFixture[str],
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZITOPS_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(f"# agent token\n{TOKEN}\n")
    os.chmod(token_file, 0o600)
    svc = svc_url[0]
    code, out, _ = run(["health", "--url", svc_url[1], "--token-file", str(token_file)], capsys)
    assert (code, out.strip()) == (0, "ready")
    svc.ready = False
    try:
        code, _, err = run(["health", "--url", svc_url[1], "--token-file", str(token_file)], capsys)
        assert code != 0 and "no worker is loaded" in err
    finally:
        svc.ready = True
    # /readyz is open (probes send no token), so health needs none either.
    code, out, _ = run(["health", "--url", svc_url[1]], capsys)
    assert (code, out.strip()) == (0, "ready")
    code, _, err = run(["status", "--url", svc_url[1]], capsys)
    assert code != 0 and "--token-file" in err and len(err.strip().splitlines()) == 1


def test_status_for_a_tenant_token_is_reduced(svc_url: tuple[MemService, str], capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZITOPS_TOKEN", OTHER)
    code, out, _ = run(["status", "--url", svc_url[1], "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["scope"] == "tenant"
    assert "recent_failures" not in data and "recoveries" not in data and "pid" not in data["workers"][0]
    code, out, _ = run(["status", "--url", svc_url[1]], capsys)
    assert code == 0 and "reduced view" in out and "boom" not in out


def test_control_characters_never_reach_the_terminal() -> None:
    from zitops.commands.client import render_status
    from zitops.commands.failures import format_table

    evil = "cat\x1b[2J\x1b]0;pwned\x07\u202e\x9b"
    table = format_table([{"time": "t", "kind": "job", "message": evil, "prompt": evil, "job_id": "j"}])
    text = render_status({"profile": evil, "workers": [{"id": evil}],
                          "recent_failures": [{"message": evil, "exc_type": evil}],
                          "recoveries": [{"reason": evil}]})
    for out in (table, text):
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\x9b" not in out
        assert "\\x1b[2J" in out  # shown, escaped


def test_connection_refused_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for cmd in ("status", "health"):
        code, _, err = run([cmd, "--url", url], capsys)
        assert code != 0
        assert len(err.strip().splitlines()) == 1
        assert "cannot connect" in err and "Traceback" not in err


def test_status_says_the_tiny_model_makes_noise() -> None:
    from zitops.commands.client import render_status

    text = render_status({"profile": "designer", "workers": [],
                          "model": {"name": "tiny", "note": "tiny random model: images are noise"}})
    assert "tiny (tiny random model: images are noise)" in text
