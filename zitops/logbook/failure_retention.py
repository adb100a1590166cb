"""Retention of failure records: by age and by bytes, oldest first, in both of their files.

Plain functions over paths, called by :class:`zitops.logbook.failures.FailureStore`
under its lock. A prune by size keeps the newest records up to
``KEEP_FRACTION`` of the cap, so the next record does not prune again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

KEEP_FRACTION = 0.8
_ROW_BYTES = ("length(id) + length(kind) + coalesce(length(job_id), 0) + length(profile) + length(prompt) + "
              "length(params) + length(exc_type) + length(message) + coalesce(length(traceback), 0) + "
              "coalesce(length(worker_id), 0) + coalesce(length(vram), 0) + length(action) + 64")
"""About what one row takes on disk."""


def prune_jsonl(path: Path, cutoff: float | None, max_bytes: int | None) -> int:
    """Rewrite ``path`` without lines older than ``cutoff`` or beyond ``max_bytes``; how many lines went."""
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        lines = fh.readlines()
    over = max_bytes is not None and sum(map(len, lines)) > max_bytes
    budget = int(max_bytes * KEEP_FRACTION) if max_bytes is not None else 0
    keep: list[bytes] = []
    total = 0
    for line in reversed(lines):  # the newest are last: keep from the end
        try:
            ts = float(json.loads(line).get("ts") or 0.0)
        except (ValueError, TypeError, AttributeError):
            continue  # a torn line
        if cutoff is not None and ts < cutoff:
            continue
        if over and total + len(line) > budget:
            break
        keep.append(line)
        total += len(line)
    if len(keep) == len(lines):
        return 0
    tmp = path.with_name(f".{path.name}.prune")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, b"".join(reversed(keep)))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return len(lines) - len(keep)


def prune_db(path: Path, cutoff: float | None, max_bytes: int | None) -> int:
    """Delete rows older than ``cutoff`` and the oldest beyond ``max_bytes``, then VACUUM; how many went."""
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        deleted = 0
        with conn:
            if cutoff is not None:
                deleted += conn.execute("DELETE FROM failures WHERE ts < ?", (cutoff,)).rowcount
            if max_bytes is not None:
                total = conn.execute(f"SELECT coalesce(sum({_ROW_BYTES}), 0) FROM failures").fetchone()[0]
                if total > max_bytes or path.stat().st_size > max_bytes:
                    row = conn.execute(
                        f"SELECT ts FROM (SELECT ts, sum({_ROW_BYTES}) OVER (ORDER BY ts DESC) AS running "
                        "FROM failures) WHERE running > ? ORDER BY ts DESC LIMIT 1",
                        (int(max_bytes * KEEP_FRACTION),)).fetchone()
                    if row is not None:
                        deleted += conn.execute("DELETE FROM failures WHERE ts <= ?", (row[0],)).rowcount
        if deleted:
            conn.execute("VACUUM")  # give the space back to the disk
        return deleted
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()
