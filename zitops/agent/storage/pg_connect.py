"""The connector: psycopg 3 behind one class (procrastinate's connector split).

It owns the store URL, the password source, the connection pool, and the
translation of every driver error into one :class:`StoreUnavailable` line
that never carries the password. The store (store_pg.py) and the listener
(pg_listen.py) only ask it for connections.

The URL is ``postgresql://USER@HOST:PORT/DB``. The password is never in it:
it comes from libpq's ``passfile`` (``?passfile=/path`` in the URL, or
``~/.pgpass``) or from a password file given here, read at every connection
attempt so a rotated Secret is picked up without a restart.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from zitops.errors import ConfigError, StoreUnavailable

# Connection-level SQLSTATE classes: 08 connection exception, 57P operator
# intervention (admin or crash shutdown, cannot connect now), 53 insufficient
# resources (too many connections, disk full).
_DOWN_STATES = ("08", "57P", "53")
# A dead peer (host gone, a partition that drops packets, no RST) is noticed in seconds instead of
# the kernel's hours: an idle connection (LISTEN) after ~5 + 3 * 2 s of unanswered keepalives, one
# with unacknowledged data (a query sent into the void) after tcp_user_timeout.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
              "tcp_user_timeout": 8_000}
# After a failover the store's DNS name may lead to a server still in recovery (a replica not yet
# promoted, or the old primary come back as one): it takes connections but refuses every write, and
# the breaker's probe would call the store back while every submit fails. libpq skips such a server.
WRITABLE = {"target_session_attrs": "read-write"}

STATEMENT_TIMEOUT_MS = 10_000
"""The server cancels any statement of the store after this long (a lock wait, a stalled disk)."""


def is_down(exc: BaseException) -> bool:
    """True when ``exc`` says the server cannot be reached (as opposed to a bad statement)."""
    if isinstance(exc, PoolTimeout | PoolClosed | psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(_DOWN_STATES)
    return False


class PgConnector:
    """One PostgreSQL target: URL, password source, pool factory and error translation."""

    def __init__(self, url: str, *, password_file: str | Path | None = None,
                 connect_timeout_s: float = 5.0) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"store URL: not a PostgreSQL URL ({_first_line(exc)}); "
                              "expected postgresql://USER@HOST:PORT/DB") from None
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("store URL: expected postgresql://USER@HOST:PORT/DB")
        if params.get("password"):
            raise ConfigError("store URL: contains a password; put it in a password file "
                              "(--store-password-file, or libpq's passfile) and remove it from the URL")
        self.conninfo = url
        self.password_file = Path(password_file) if password_file else None
        self.connect_timeout_s = connect_timeout_s
        user, host = params.get("user", ""), params.get("host", "localhost")
        self.display = f"postgresql://{user}{'@' if user else ''}{host}:{params.get('port', 5432)}/" \
                       f"{params.get('dbname', '')}"
        """The URL for messages and logs (no query string, never a password)."""
        self._secret: str | None = None

    def connect_kwargs(self) -> dict[str, Any]:
        """libpq parameters for one connection attempt: the password, read now, and timeouts."""
        kwargs: dict[str, Any] = {"connect_timeout": max(1, round(self.connect_timeout_s)),
                                  "application_name": "zitops", **KEEPALIVES, **WRITABLE,
                                  "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                                             f"-c idle_in_transaction_session_timeout={STATEMENT_TIMEOUT_MS}"}
        if self.password_file is not None:
            try:
                secret = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise StoreUnavailable(f"store password file {self.password_file}: cannot read it "
                                       f"({exc.strerror}); check the mounted Secret") from None
            self._secret = secret or None
            kwargs["password"] = secret
        return kwargs

    def pool(self, *, max_size: int, timeout_s: float) -> ConnectionPool[psycopg.Connection[DictRow]]:
        """A closed sync pool of autocommit, dict-row connections; the caller opens it."""
        def kwargs() -> dict[str, Any]:
            return {**self.connect_kwargs(), "autocommit": True, "row_factory": dict_row}

        return ConnectionPool(
            self.conninfo, kwargs=kwargs, min_size=1, max_size=max_size, open=False,
            # A connection broken by a server restart is found on checkout and
            # replaced, so the first call after the restart does not fail.
            check=ConnectionPool.check_connection, timeout=timeout_s, name="zitops-store",
        )

    async def connect_async(self) -> psycopg.AsyncConnection[Any]:
        """One autocommit async connection (for LISTEN); StoreUnavailable when it fails."""
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True,
                                                         **self.connect_kwargs())
        except psycopg.Error as exc:
            raise self.unavailable(exc) from exc

    def probe(self) -> None:
        """Connect, run ``SELECT 1`` and disconnect; raises on failure."""
        with psycopg.connect(self.conninfo, **self.connect_kwargs()) as conn:
            conn.execute("SELECT 1")

    def redact(self, text: str) -> str:
        """``text`` without the password, in any of the forms a message could carry it."""
        if self._secret:
            text = text.replace(self._secret, "***")
        text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
        return re.sub(r"(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The one-line StoreUnavailable for a driver or pool error."""
        if isinstance(exc, StoreUnavailable):
            return exc
        if isinstance(exc, PoolTimeout):
            why = "no connection within the pool timeout (server down or unreachable?)"
        else:
            why = f"{type(exc).__name__}: {_first_line(exc)}"
        return StoreUnavailable(self.redact(f"job store {self.display} unavailable: {why}"))


class Breaker:
    """Fail fast while the store is known to be down; a background probe closes it again.

    Without it every store call would wait the pool timeout while the server
    is down, and the dispatcher calls the store from its event loop. On the
    probe thread, ``on_trip`` runs first (the store closes its pool, so no
    reconnect loop spins and logs while the server is away), then ``probe``
    every ``interval_s`` until it returns (the store opens a fresh pool).
    """

    def __init__(self, probe: Callable[[], None], interval_s: float = 1.0,
                 on_trip: Callable[[], None] | None = None) -> None:
        self._probe = probe
        self._on_trip = on_trip
        self._on_change: Callable[[str | None], None] | None = None
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def reason(self) -> str | None:
        """Why the store is down, or None while it is up."""
        return self._reason

    def check(self) -> None:
        """Raise the last StoreUnavailable while the store is down."""
        reason = self._reason
        if reason is not None:
            raise StoreUnavailable(reason)

    def watch(self, on_change: Callable[[str | None], None]) -> None:
        """Call ``on_change(reason)`` once when the store is lost and ``on_change(None)`` once when it is back."""
        self._on_change = on_change

    def trip(self, reason: str) -> None:
        """Mark the store down and start probing for its return."""
        with self._lock:
            lost = self._reason is None
            self._reason = reason
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="zitops-store-probe", daemon=True)
                self._thread.start()
        if lost:
            self._changed(reason)

    def _changed(self, reason: str | None) -> None:
        if self._on_change is not None:
            with contextlib.suppress(Exception):  # a log line must not break the store
                self._on_change(reason)

    def close(self) -> None:
        """Stop probing."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """True after :meth:`close`."""
        return self._stop.is_set()

    def _run(self) -> None:
        if self._on_trip is not None:
            with contextlib.suppress(Exception):
                self._on_trip()
        while not self._stop.wait(self._interval_s):
            try:
                self._probe()
            except Exception:  # still down (or the password file is unreadable): keep probing
                continue
            with self._lock:
                self._reason = None
                self._thread = None
            self._changed(None)
            return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
