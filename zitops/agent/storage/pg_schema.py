"""The PostgreSQL store's SQL: named queries from ``sql/queries.sql`` and numbered migrations.

The SQL lives in ``.sql`` files shipped with the package (procrastinate's
layout): ``schema.sql`` bootstraps the ``zitops`` schema and its version
table, ``migrations/NNNN_name.sql`` build everything else, each applied
once, in order, at start, under a transaction-scoped advisory lock so agents
starting at once on an empty database run them one after the other.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from psycopg import Connection

from zitops.errors import StoreUnavailable

SCHEMA_LOCK = 0x7A17_0001
"""``pg_advisory_xact_lock`` key held while the schema is created or upgraded."""

_SQL = resources.files("zitops.agent") / "sql"
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    sql: str


@functools.cache
def queries() -> dict[str, str]:
    """Every named query of ``queries.sql``."""
    text = (_SQL / "queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> str:
    """The SQL of one named query (KeyError for a name the file lacks)."""
    return queries()[name]


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The shipped migrations, oldest first."""
    found = []
    for entry in (_SQL / "migrations").iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"zitops/agent/sql/migrations: versions {versions} are not 1..N without gaps")
    return tuple(found)


def schema_version(conn: Connection[Any]) -> int:
    """The highest applied migration (0 on a database without the version table)."""
    row = conn.execute("SELECT to_regclass('zitops.schema_version') IS NOT NULL").fetchone()
    if not row or not _first(row):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM zitops.schema_version").fetchone()
    return int(_first(row)) if row else 0


def migrate(conn: Connection[Any]) -> list[int]:
    """Create or upgrade the schema in one transaction; return the versions applied now."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute((_SQL / "schema.sql").read_text(encoding="utf-8"), prepare=False)
        current = schema_version(conn)
        known = migrations()
        if current > len(known):
            raise StoreUnavailable(
                f"the job store's schema is at version {current}, newer than this zitops knows "
                f"({len(known)}): upgrade zitops on this host to match the fleet")
        for mig in known[current:]:
            conn.execute(mig.sql, prepare=False)
            conn.execute("INSERT INTO zitops.schema_version (version, name) VALUES (%s, %s)",
                         (mig.version, mig.name))
            applied.append(mig.version)
    return applied


def _first(row: Any) -> Any:
    # Rows are tuples or dicts depending on the connection's row factory.
    return next(iter(row.values())) if isinstance(row, dict) else row[0]
