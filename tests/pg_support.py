"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl, 127.0.0.1, a free port, a temp dir.

Runs as the ``postgres`` user when the tests run as root (PostgreSQL refuses
root). Password authentication (scram) over TCP, with the password in a
file, so every test goes through the store's real password-file path. A
missing ``initdb`` fails the test: skipping would prove nothing.

Use the fixtures by importing them into a test module::

    from tests.pg_support import pg_cluster, pg_db  # noqa: F401
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from zitops.agent.pg_listen import Notice

INSTALL_HINT = ("PostgreSQL's initdb was not found on PATH or in /usr/lib/postgresql/*/bin: install "
                "Debian's postgresql package (apt-get install -y postgresql); .ci/run does this")
SUPERUSER = "postgres"


def pg_bin(tool: str) -> str | None:
    """Path of a PostgreSQL server tool: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgDatabase:
    """One fresh database of the test cluster."""

    url: str
    password_file: Path
    name: str

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """A plain autocommit connection (for assertions on the tables)."""
        return psycopg.connect(self.url, password=self.password_file.read_text().strip(), autocommit=True)


class PgCluster:
    """initdb'd data directory and a running postmaster; ``stop``/``start`` for outage tests."""

    def __init__(self) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="zitops-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.password_file = self.root / "password"
        self.password_file.write_text(uuid.uuid4().hex + "\n")
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, SUPERUSER)
            shutil.chown(self.password_file, SUPERUSER)
        self.password_file.chmod(0o600)
        self._run(self._initdb, "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(self.password_file),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions")
        if self._as_postgres:
            # The tests (root) read the password; the file stays 0600.
            shutil.chown(self.password_file, "root")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 100\n")
        self._lock = threading.Lock()
        self.start()

    def _run(self, *argv: str) -> None:
        cmd = ["runuser", "-u", SUPERUSER, "--", *argv] if self._as_postgres else list(argv)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(self._pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, roll back open transactions)."""
        self._run(self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, dbname: str, user: str = SUPERUSER) -> str:
        """The store URL of a database (password in ``password_file``)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit superuser connection to ``postgres``."""
        return psycopg.connect(self.url("postgres"), password=self.password_file.read_text().strip(),
                               autocommit=True)

    def create_db(self) -> PgDatabase:
        """A new empty database."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return PgDatabase(self.url(name), self.password_file, name)

    def drop_db(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still on it."""
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def remove(self) -> None:
        """Stop the server and delete everything."""
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


# One cluster per pytest process, however many modules import the fixture:
# each importing module gets its own session fixture definition, so they share
# this one by reference count and the last to finish removes it.
_shared: list[PgCluster] = []
_users = 0


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's throwaway PostgreSQL cluster."""
    global _users
    if not _shared:
        _shared.append(PgCluster())
    _users += 1
    try:
        yield _shared[0]
    finally:
        _users -= 1
        if _users == 0:
            _shared.pop().remove()


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> Iterator[PgDatabase]:
    """A fresh, empty database for one test, dropped afterwards."""
    db = pg_cluster.create_db()
    try:
        yield db
    finally:
        try:
            pg_cluster.drop_db(db.name)
        except psycopg.OperationalError:
            pass  # the server is down (an outage test failed midway); remove() cleans up


T = TypeVar("T")


def poll_until(probe: Callable[[], T], timeout_s: float = 30.0, every_s: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy and return that; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"nothing after {timeout_s} s from {probe}", pytrace=False)
        time.sleep(every_s)


class Notices:
    """A PgListener on its own thread and event loop; its notices land in a queue."""

    def __init__(self, listener: AsyncIterator[Notice]) -> None:
        self.queue: queue.Queue[Notice] = queue.Queue()
        self._listener = listener
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="test-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._task = self._loop.create_task(self._collect())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.close()

    async def _collect(self) -> None:
        async for notice in self._listener:
            self.queue.put(notice)

    def next(self, kind: str, timeout_s: float = 20.0) -> Notice:
        """The next notice of ``kind`` (others are passed over); fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                notice = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {kind!r} notice within {timeout_s} s", pytrace=False)
            if notice.kind == kind:
                return notice

    def stop(self) -> None:
        """Cancel the listener and join its thread."""
        task = self._task
        if task is not None:
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(10)


def init_store_at_barrier(barrier: Any, url: str, password_file: str, agent_id: str, results: Any) -> None:
    """Child process: wait for the others, then open a PgJobStore on a (maybe empty) database."""
    from zitops.agent.store_pg import PgJobStore
    from zitops.engine.request import GenerationRequest

    barrier.wait(30)
    try:
        store = PgJobStore(url, password_file=password_file, agent_id=agent_id)
        store.add(GenerationRequest(prompt=agent_id, seeds=(1,), width=64, height=64, steps=2))
        store.close()
        results.put((agent_id, "ok"))
    except Exception as exc:  # reported to the test, which asserts "ok"
        results.put((agent_id, f"{type(exc).__name__}: {exc}"))
