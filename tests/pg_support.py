"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl, 127.0.0.1, a free port, a temp dir.

Runs as the ``postgres`` user when the tests run as root (PostgreSQL refuses
root). Password authentication (scram) over TCP, with the password in a
file, so every test goes through the store's real password-file path. A
missing ``initdb`` fails the test: skipping would prove nothing.

A test module gets the fixtures with ``pytest_plugins = ["tests.pg_support"]``,
so the whole run shares one cluster, and imports this module's classes only
for type checking (so pytest imports it first, as a plugin, and rewrites its
asserts); run-time helpers are in store_support.py.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

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

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A plain autocommit connection (for assertions on the tables)."""
        return psycopg.connect(self.url, password=self.password_file.read_text().strip(), autocommit=True)


class PgCluster:
    """initdb'd data directory and a running postmaster; ``stop``/``start`` for outage tests."""

    def __init__(self, listen: tuple[str, ...] = (), hba: tuple[str, ...] = (), conf: tuple[str, ...] = ()) -> None:
        """``listen``: addresses besides 127.0.0.1 (a veth's); ``hba``: networks allowed to log in from them;
        ``conf``: postgresql.conf lines that override the defaults (``synchronous_commit = on`` for crash tests)."""
        self.listen, self.hba, self.conf = listen, hba, conf
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="zitops-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.password_file = self.root / "password"
        self._as_postgres = os.geteuid() == 0
        try:
            self._create()
        except BaseException:
            self.remove()
            raise

    def _create(self) -> None:
        self.password_file.write_text(uuid.uuid4().hex + "\n")
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
            conf.write(f"listen_addresses = '{','.join(('127.0.0.1', *self.listen))}'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 100\n")
            conf.writelines(f"{line}\n" for line in self.conf)
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {net} scram-sha-256\n" for net in self.hba)
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

    def kill9(self) -> None:
        """SIGKILL the postmaster and every server process (an OOM kill, a crashed container); ``start`` recovers."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        victims = [pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    victims.append(int(stat.parent.name))
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        for victim in victims:  # gone (or a zombie of pg_ctl's, reaped by init) before the restart
            for _ in range(200):
                try:
                    os.kill(victim, 0)
                except ProcessLookupError:
                    break
                if Path(f"/proc/{victim}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
                time.sleep(0.05)
        # A zombie nobody reaped yet still answers kill(pid, 0), and the new postmaster would take it for a
        # live one; a restarted container (a fresh PID namespace) never sees the old lock either.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        (self.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def standby(self) -> PgCluster:
        """A streaming replica of this cluster (pg_basebackup -R), started on a port of its own.

        It replays the primary's WAL; name it in ``synchronous_standby_names`` (its cluster_name is
        ``standby``) for synchronous replication. ``promote`` and ``move_to`` make it the new primary.
        """
        replica = PgCluster.__new__(PgCluster)
        replica.listen, replica.hba, replica.conf = self.listen, self.hba, self.conf
        replica._initdb, replica._pg_ctl, replica._as_postgres = self._initdb, self._pg_ctl, self._as_postgres
        replica.root = Path(tempfile.mkdtemp(prefix="zitops-pg-"))
        replica.root.chmod(0o755)
        replica.data, replica.port, replica.password_file = replica.root / "data", free_port(), self.password_file
        try:
            if self._as_postgres:
                shutil.chown(replica.root, SUPERUSER)
            basebackup = pg_bin("pg_basebackup")
            assert basebackup is not None, INSTALL_HINT
            replica._run(basebackup, "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast",
                         "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER)
            with (replica.data / "postgresql.conf").open("a") as conf:
                conf.write(f"port = {replica.port}\nunix_socket_directories = '{replica.root}'\n"
                           "cluster_name = 'standby'\n")
            replica.start()
        except BaseException:
            replica.remove()
            raise
        return replica

    def promote(self) -> None:
        """End recovery on a standby: it becomes a primary and takes writes."""
        self._run(self._pg_ctl, "-D", str(self.data), "-w", "-t", "60", "promote")

    def move_to(self, port: int) -> None:
        """Restart on ``port`` (the address clients know: a DNS name or a VIP moved to this server)."""
        self.stop()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {port}\n")
        self.port = port
        self.start()

    def terminate(self, dbname: str) -> int:
        """pg_terminate_backend on every connection to ``dbname``; how many were cut."""
        with self.admin() as conn:
            row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def url(self, dbname: str, user: str = SUPERUSER, host: str = "127.0.0.1") -> str:
        """The store URL of a database (password in ``password_file``)."""
        return f"postgresql://{user}@{host}:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit superuser connection to ``postgres``."""
        return psycopg.connect(self.url("postgres"), password=self.password_file.read_text().strip(),
                               autocommit=True)

    def create_db(self, tablespace: Path | None = None) -> PgDatabase:
        """A new empty database (with ``tablespace``: every table of it in that directory, e.g. a small tmpfs)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            if tablespace is None:
                conn.execute(f'CREATE DATABASE "{name}"')
            else:
                if self._as_postgres:
                    shutil.chown(tablespace, SUPERUSER)
                conn.execute(f"CREATE TABLESPACE \"{name}\" LOCATION '{tablespace}'")
                conn.execute(f'CREATE DATABASE "{name}" TABLESPACE "{name}"')
        return PgDatabase(self.url(name), self.password_file, name)

    def drop_db(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still on it."""
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP TABLESPACE IF EXISTS "{name}"')

    def remove(self) -> None:
        """Stop the server and delete everything."""
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's throwaway PostgreSQL cluster, removed at the end."""
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> Iterator[PgDatabase]:
    """A fresh, empty database for one test, dropped afterwards."""
    db = pg_cluster.create_db()
    try:
        yield db
    finally:
        # The server may be down (an outage test failed midway); remove() cleans up then.
        with contextlib.suppress(psycopg.OperationalError):
            pg_cluster.drop_db(db.name)

