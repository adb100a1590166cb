"""Reading a deployment's JSON logs back: merged by time, filtered by level and age, followed.

The agent and each worker write their own JSON-lines file (:mod:`zitops.logbook.logs`);
this module reads them as one stream for ``zitops logs``, so an operator never
needs the file names. Lines that are not JSON (a torn last line, a library
writing to the file directly) are kept as ``event`` text at level ``info``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

LEVELS = ("debug", "info", "warning", "error", "critical")
SKIP = ("access.log",)
"""uvicorn's access log is a request log, not a tier of the agent's: ``zitops logs`` leaves it out."""


def level_rank(level: str) -> int:
    """The level's rank (debug 0 .. critical 4); unknown names rank as info."""
    name = level.lower()
    name = {"warn": "warning", "fatal": "critical", "exception": "error"}.get(name, name)
    return LEVELS.index(name) if name in LEVELS else 1


def parse_line(line: str) -> dict[str, Any]:
    """One log line as a mapping; non-JSON text becomes ``{"event": text, "level": "info"}``."""
    with contextlib.suppress(ValueError):
        data = json.loads(line)
        if isinstance(data, dict):
            return data
    return {"event": line.rstrip("\n"), "level": "info"}


def line_ts(record: dict[str, Any]) -> float:
    """The record's time in epoch seconds (0 when it has none, so it sorts first)."""
    stamp = record.get("timestamp")
    if not isinstance(stamp, str):
        return 0.0
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Filter:
    """Which records to show: at or above ``level``, at or after ``since`` (epoch seconds)."""

    level: str = "debug"
    since: float | None = None

    def keep(self, record: dict[str, Any]) -> bool:
        """True when the record passes both bounds."""
        if level_rank(str(record.get("level", "info"))) < level_rank(self.level):
            return False
        return self.since is None or line_ts(record) >= self.since


def current_files(log_dir: Path) -> list[Path]:
    """The live JSON log files (agent and workers), without rotated ones."""
    return sorted(p for p in log_dir.glob("*.log") if p.is_file() and p.name not in SKIP
                  and not p.name.startswith(("supervisor", ".")))


def _all_files(log_dir: Path) -> list[Path]:
    # Rotated files (zitops.log.1, ...) too, for a --since that reaches back past a rotation.
    return sorted(p for p in log_dir.glob("*.log*") if p.is_file() and p.name.split(".log")[0] + ".log" not in SKIP
                  and not p.name.startswith(("supervisor", ".")) and not p.name.endswith(".jsonl"))


def read(log_dir: Path, flt: Filter, tail: int | None = None) -> list[dict[str, Any]]:
    """Every kept record in every file, merged by time (oldest first); the last ``tail`` when given."""
    files = _all_files(log_dir) if flt.since is not None else current_files(log_dir)
    records: list[dict[str, Any]] = []
    for path in files:
        with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as fh:
            records.extend(r for r in map(parse_line, fh) if flt.keep(r))
    records.sort(key=line_ts)
    if tail is None:
        return records
    return records[-tail:] if tail > 0 else []


class Follower:
    """Tails every live log file of a directory: new files, rotations and truncations included."""

    def __init__(self, log_dir: Path, flt: Filter) -> None:
        self.log_dir = log_dir
        self.flt = flt
        self._open: dict[Path, tuple[IO[str], int]] = {}
        for path in current_files(log_dir):
            fh = path.open(encoding="utf-8", errors="replace")
            fh.seek(0, os.SEEK_END)  # only what comes after the backlog read() already showed
            self._open[path] = (fh, os.fstat(fh.fileno()).st_ino)

    def poll(self) -> list[dict[str, Any]]:
        """Complete lines written since the last poll, merged by time."""
        out: list[dict[str, Any]] = []
        for path in current_files(self.log_dir):
            entry = self._open.get(path)
            try:
                inode = path.stat().st_ino
            except OSError:
                continue
            if entry is None or entry[1] != inode:
                if entry is not None:  # rotated: finish the old file, then start the new one from its top
                    out.extend(self._drain(entry[0]))
                    entry[0].close()
                fh = path.open(encoding="utf-8", errors="replace")
                entry = self._open[path] = (fh, inode)
            elif entry[0].tell() > path.stat().st_size:  # truncated
                entry[0].seek(0)
            out.extend(self._drain(entry[0]))
        out.sort(key=line_ts)
        return out

    def _drain(self, fh: IO[str]) -> list[dict[str, Any]]:
        records = []
        while True:
            pos = fh.tell()
            line = fh.readline()
            if not line:
                break
            if not line.endswith("\n"):  # a line still being written: read it whole next time
                fh.seek(pos)
                break
            record = parse_line(line)
            if self.flt.keep(record):
                records.append(record)
        return records

    def close(self) -> None:
        """Close every file."""
        for fh, _ in self._open.values():
            fh.close()
        self._open.clear()


def follow(log_dir: Path, flt: Filter, interval_s: float = 0.5,
           stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """New records as they are written, until ``stop()`` is true (or forever)."""
    follower = Follower(log_dir, flt)
    try:
        while not stop():
            yield from follower.poll()
            time.sleep(interval_s)
    finally:
        follower.close()


_HEAD = ("timestamp", "level", "process", "event", "logger", "pid")


def pretty(record: dict[str, Any]) -> str:
    """One human line: time, level, process, event, then the other fields as key=value."""
    stamp = str(record.get("timestamp", ""))[:23].replace("T", " ")
    level = str(record.get("level", "info")).upper()
    rest = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in record.items()
                    if k not in _HEAD)
    line = f"{stamp:<23} {level:<8} {str(record.get('process', '-')):<9} {record.get('event', '')}"
    return f"{line}  {rest}" if rest else line
