"""The PostgreSQL connector without a server: URL rules, password file, redaction, error classes, breaker."""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from zitops.agent.storage.pg_connect import Breaker, PgConnector, is_down
from zitops.agent.storage.pg_schema import migrations, queries
from zitops.errors import ConfigError, StoreUnavailable


def test_url_with_a_password_is_refused() -> None:
    with pytest.raises(ConfigError, match="contains a password; put it in a password file"):
        PgConnector("postgresql://zitops:hunter2@db:5432/zitops")
    with pytest.raises(ConfigError, match="expected postgresql://USER@HOST:PORT/DB"):
        PgConnector("mysql://zitops@db/zitops")


def test_display_has_no_query_string() -> None:
    conn = PgConnector("postgresql://zitops@db.internal:6432/jobs?passfile=/run/secrets/pgpass")
    assert conn.display == "postgresql://zitops@db.internal:6432/jobs"


def test_password_file_is_read_at_every_connection_attempt(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n")
    conn = PgConnector("postgresql://zitops@db/zitops", password_file=secret)
    assert conn.connect_kwargs()["password"] == "first"
    secret.write_text("rotated")
    assert conn.connect_kwargs()["password"] == "rotated"
    secret.unlink()
    with pytest.raises(StoreUnavailable, match=f"store password file {secret}: cannot read it"):
        conn.connect_kwargs()


def test_redact_removes_the_password_in_every_form(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-Pw")
    conn = PgConnector("postgresql://zitops@db/zitops", password_file=secret)
    conn.connect_kwargs()
    text = ("failed for s3cr3t-Pw; dsn host=db password=other user=x; "
            "url postgresql://zitops:pw2@db/zitops; password = 'quoted one'")
    out = conn.redact(text)
    for leaked in ("s3cr3t-Pw", "other", "pw2", "quoted one"):
        assert leaked not in out
    assert "user=x" in out and "postgresql://zitops:***@db/zitops" in out
    error = conn.unavailable(psycopg.OperationalError("auth failed for s3cr3t-Pw\nHINT: more"))
    assert str(error) == ("job store postgresql://zitops@db:5432/zitops unavailable: "
                          "OperationalError: auth failed for ***")


def test_down_errors_are_told_from_statement_errors() -> None:
    assert is_down(psycopg.OperationalError("connection refused"))  # client side: no SQLSTATE
    assert is_down(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_down(PoolTimeout("no connection"))
    assert not is_down(psycopg.errors.UniqueViolation("duplicate key"))
    assert not is_down(psycopg.errors.SerializationFailure("retry"))
    assert not is_down(ValueError("x"))


def test_breaker_fails_fast_until_the_probe_succeeds() -> None:
    up = threading.Event()
    tripped: list[bool] = []

    def probe() -> None:
        if not up.is_set():
            raise OSError("still down")

    breaker = Breaker(probe, interval_s=0.01, on_trip=lambda: tripped.append(True))
    breaker.check()  # up: nothing raised
    breaker.trip("job store x unavailable: refused")
    with pytest.raises(StoreUnavailable, match="refused"):
        breaker.check()
    up.set()
    deadline = time.monotonic() + 10
    while breaker.reason is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    breaker.check()
    assert tripped == [True]
    breaker.close()


def test_sql_files_parse() -> None:
    assert {"claim_jobs", "heartbeat", "reap_expired", "fleet_counts", "put_images"} <= set(queries())
    assert all("FOR UPDATE SKIP LOCKED" in queries()[q] for q in ("claim_jobs", "reap_expired"))
    assert [m.version for m in migrations()] == list(range(1, len(migrations()) + 1))


def test_missing_initdb_fails_the_run_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Imported here, not at the top: the integration tests load it as a pytest plugin first.
    pg_support = importlib.import_module("tests.pg_support")
    monkeypatch.setattr(pg_support, "pg_bin", lambda tool: None)
    with pytest.raises(pytest.fail.Exception, match="install Debian's postgresql package"):
        pg_support.PgCluster()
