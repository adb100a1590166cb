"""zitops.logbook.failures and ``zitops failures``: both sinks, queries, parsing, the CLI."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from zitops.cli import cli
from zitops.config import config_from_mapping, config_to_dict
from zitops.errors import AgentUnavailable, InvalidRequest, Unauthorized
from zitops.logbook.failure_query import failures_payload, parse_since
from zitops.logbook.failures import FailureRecord, FailureStore
from zitops.profile import load_profile, profile_to_dict


def _record(store: FailureStore, n: int = 0, **over: Any) -> FailureRecord:
    fields: dict[str, Any] = dict(
        job_id=f"job-{n}", profile="designer", prompt="一只猫 " + "a very long prompt " * 10,
        params={"prompt": "secret full prompt " * 20, "negative_prompt": "n" * 80, "steps": 8, "width": 1024,
                "seeds": (1, 2)}, exc_type="EngineError",
        message=f"boom {n}", traceback="Traceback...\nEngineError: boom", worker_id="w0",
        vram={"allocated_mib": 100.5}, action="fail",
    )
    fields.update(over)
    return store.record(**fields)


@pytest.fixture
def store(tmp_path: Path) -> FailureStore:
    return FailureStore(tmp_path / "state", tmp_path / "logs")


def test_record_goes_to_jsonl_and_sqlite(store: FailureStore) -> None:
    rec = _record(store)
    assert len(rec.prompt) == 50 and rec.prompt.startswith("一只猫 a very")
    assert rec.params["seeds"] == [1, 2]
    assert "prompt" not in rec.params and rec.params["negative_prompt"] == "n" * 50
    (line,) = store.jsonl_path.read_text("utf-8").splitlines()
    data = json.loads(line)
    assert data == rec.to_dict()
    assert data["time"].endswith("Z") and abs(data["ts"] - time.time()) < 60
    for key in ("job_id", "profile", "prompt", "params", "exc_type", "message", "traceback",
                "worker_id", "vram", "action", "kind"):
        assert key in data
    with sqlite3.connect(store.db_path) as conn:
        row = conn.execute("SELECT job_id, action, params, vram FROM failures").fetchone()
    assert row[0] == "job-0" and row[1] == "fail"
    assert json.loads(row[2])["steps"] == 8 and json.loads(row[3])["allocated_mib"] == 100.5


def test_list_newest_first_with_since_and_limit(store: FailureStore) -> None:
    recs = [_record(store, i) for i in range(5)]
    listed = store.list()
    assert [r.job_id for r in listed] == ["job-4", "job-3", "job-2", "job-1", "job-0"]
    assert listed[0] == recs[-1]
    assert [r.job_id for r in store.list(limit=2)] == ["job-4", "job-3"]
    assert [r.job_id for r in store.list(since=recs[3].ts)] == ["job-4", "job-3"]
    assert [d["job_id"] for d in store.recent(3)] == ["job-4", "job-3", "job-2"]
    with pytest.raises(InvalidRequest, match="limit"):
        store.list(limit=0)


def test_crash_records_without_a_job(store: FailureStore) -> None:
    rec = _record(store, job_id=None, prompt="", params={}, traceback=None, vram=None,
                  exc_type="WorkerCrashed", action="restart", kind="crash")
    (got,) = store.list()
    assert got == rec and got.job_id is None and got.kind == "crash"


def test_jsonl_is_the_fallback_and_survives_a_torn_line(store: FailureStore) -> None:
    for i in range(3):
        _record(store, i)
    store.db_path.unlink()
    with store.jsonl_path.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "torn", "ts": ')
    assert [r.job_id for r in store.list(limit=2)] == ["job-2", "job-1"]


def test_concurrent_writers_never_interleave(store: FailureStore) -> None:
    def work(t: int) -> None:
        for i in range(10):
            _record(store, t * 100 + i, message="x" * 3000)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    lines = store.jsonl_path.read_text("utf-8").splitlines()
    assert len(lines) == 60
    assert len({json.loads(line)["job_id"] for line in lines}) == 60
    assert len(store.list(limit=1000)) == 60


def test_bad_action_is_refused(store: FailureStore) -> None:
    with pytest.raises(ValueError, match="retry, requeue, fail"):
        _record(store, action="shrug")


def test_parse_since() -> None:
    now = 1_000_000.0
    assert parse_since("1h", now=now) == now - 3600
    assert parse_since("30m", now=now) == now - 1800
    assert parse_since("2d", now=now) == now - 172800
    assert parse_since("45s", now=now) == now - 45
    assert parse_since("2026-01-31T12:00:00Z") == parse_since("2026-01-31T12:00:00")
    assert parse_since("2026-01-31T13:00:00+01:00") == parse_since("2026-01-31T12:00:00Z")
    for bad in ("", "yesterday", "5 parsecs", "-1h"):
        with pytest.raises(InvalidRequest, match="30m, 1h"):
            parse_since(bad)


def test_failures_payload_for_the_api(store: FailureStore) -> None:
    recs = [_record(store, i) for i in range(3)]
    body = failures_payload(store, since=str(recs[1].ts), limit="5")
    assert [r["job_id"] for r in body["failures"]] == ["job-2", "job-1"]
    assert json.loads(json.dumps(body)) == body
    assert len(failures_payload(store, since="1h", limit=None)["failures"]) == 3
    assert failures_payload(store)["failures"][0] == recs[-1].to_dict()
    for bad in ({"limit": "0"}, {"limit": "many"}, {"limit": 5000}, {"since": "later"}):
        with pytest.raises(InvalidRequest):
            failures_payload(store, **bad)


# ------------------------------------------------------------------ the CLI


def _config(tmp_path: Path) -> Path:
    paths = {"state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "logs"),
             "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    cfg = config_from_mapping({"profile": profile_to_dict(load_profile("designer")), "paths": paths})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)), "utf-8")
    return path


def test_cli_reads_the_store_from_a_config(tmp_path: Path) -> None:
    store = FailureStore(tmp_path / "state", tmp_path / "logs")
    _record(store, 1, message="first\nsecond line")
    _record(store, 2, exc_type="OutOfMemory", kind="oom")
    cfg = _config(tmp_path)
    result = CliRunner().invoke(cli, ["failures", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].startswith("TIME") and "EXC_TYPE" in rows[0]
    assert "job-2" in rows[1] and "OutOfMemory" in rows[1] and "job-1" in rows[2]
    assert "first second line" in rows[2], "a message must stay on its row"

    result = CliRunner().invoke(cli, ["failures", "--config", str(cfg), "--json", "--limit", "1"])
    assert result.exit_code == 0
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["job_id"] == "job-2"


def test_cli_since_filters_and_empty_store(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    result = CliRunner().invoke(cli, ["failures", "--config", str(cfg), "--since", "1h"])
    assert result.exit_code == 0 and result.stdout.strip() == "no failures recorded"
    _record(FailureStore(tmp_path / "state", tmp_path / "logs"), 7)
    future = "2999-01-01T00:00:00Z"
    result = CliRunner().invoke(cli, ["failures", "--config", str(cfg), "--since", future, "--json"])
    assert result.exit_code == 0 and result.stdout == ""
    result = CliRunner().invoke(cli, ["failures", "--config", str(cfg), "--since", "soon"])
    assert isinstance(result.exception, InvalidRequest)


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Bearer t0k":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"failures": [{"time": "2026-01-01T00:00:00.000Z", "kind": "hang", "job_id": "j9",
                                         "action": "requeue", "exc_type": "Hang", "message": "no heartbeat"}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def agent_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_cli_fetches_from_a_running_agent(agent_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZITOPS_TOKEN", raising=False)
    _Handler.seen.clear()
    token_file = tmp_path / "token"
    token_file.write_text("t0k\n", "utf-8")
    result = CliRunner().invoke(cli, ["failures", "--url", agent_url, "--token-file", str(token_file),
                                      "--since", "1h", "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "j9" in result.output and "no heartbeat" in result.output
    path, auth = _Handler.seen[-1]
    assert path.startswith("/v1/failures?") and "limit=5" in path and "since=" in path
    result = CliRunner().invoke(cli, ["failures", "--url", agent_url])
    assert isinstance(result.exception, Unauthorized) and "--token-file" in str(result.exception)
    monkeypatch.setenv("ZITOPS_TOKEN", "t0k")
    assert CliRunner().invoke(cli, ["failures", "--url", agent_url, "--json"]).exit_code == 0


def test_cli_reports_an_unreachable_agent() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(cli, ["failures", "--url", f"http://127.0.0.1:{port}"])
    assert isinstance(result.exception, AgentUnavailable) and "is it running" in str(result.exception)


def test_agent_id_is_a_field_and_an_older_database_gains_the_column(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "failures.sqlite3") as conn:  # the table as it was before agent_id
        conn.execute("CREATE TABLE failures (id TEXT PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, "
                     "job_id TEXT, profile TEXT NOT NULL, prompt TEXT NOT NULL, params TEXT NOT NULL, "
                     "exc_type TEXT NOT NULL, message TEXT NOT NULL, traceback TEXT, worker_id TEXT, "
                     "vram TEXT, action TEXT NOT NULL)")
        conn.execute("INSERT INTO failures VALUES ('old', 1.0, 'job', 'j0', 'p', '', '{}', 'E', 'm', NULL, "
                     "NULL, NULL, 'fail')")
    conn.close()
    store = FailureStore(state, tmp_path / "logs")
    assert [(r.id, r.agent_id) for r in store.list()] == [("old", None)]
    _record(store, 1, agent_id="agent-b")
    _record(store, 2)  # a single agent: no id
    assert {r.job_id: r.agent_id for r in store.list()} == {"job-1": "agent-b", "job-2": None, "j0": None}
    (line, _) = store.jsonl_path.read_text("utf-8").splitlines()
    assert json.loads(line)["agent_id"] == "agent-b"
