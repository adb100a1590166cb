"""Finished jobs whose images wait on this host for the object store, kept across an agent restart.

While the object store is down, a finished job stays ``running`` with its
image files on this host (:mod:`zitops.agent.dispatch.results`). A restart
must not run it again (nothing done twice): each held job has a small JSON
entry in ``<output_dir>/.held/``, written atomically when the job is held and
removed once its images are objects and it succeeded (or failed). At start
the result writer reads the entries back, the store's ``recover`` leaves
those jobs running, and the object store's round uploads them like any held
job. The directory is beside the images it describes, and the output pruning
looks only at files directly in ``output_dir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ENTRY = re.compile(r"^([0-9A-Za-z_-]{1,128})\.json$")


@dataclass(frozen=True)
class Held:
    """A finished job whose images wait on this host for the object store."""

    worker_id: str
    names: tuple[str, ...]
    info: dict[str, Any]


class HeldJournal:
    """One JSON file per held job under ``directory`` (see the module docstring). Blocking: call off the loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, job_id: str, held: Held) -> None:
        """Write the job's entry: a temp file, fsynced, renamed over the entry (never half-written)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"worker_id": held.worker_id, "names": list(held.names), "info": held.info},
                          default=str).encode()
        tmp = self.directory / f".{job_id}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / f"{job_id}.json")
        with contextlib.suppress(OSError):  # the rename is durable once the directory is
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def drop(self, job_id: str) -> None:
        """Remove the job's entry (its images are objects now, or the job failed)."""
        (self.directory / f"{job_id}.json").unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, Held], list[str]]:
        """The entries found (job id -> Held), and the names of unreadable ones (removed)."""
        found: dict[str, Held] = {}
        bad: list[str] = []
        if not self.directory.is_dir():
            return found, bad
        for path in sorted(self.directory.iterdir()):
            m = _ENTRY.match(path.name)
            if m is None:
                if path.name.endswith(".tmp"):  # a save cut short: its job was never held on disk
                    path.unlink(missing_ok=True)
                continue
            try:
                data = json.loads(path.read_bytes())
                found[m.group(1)] = Held(str(data["worker_id"]), tuple(str(n) for n in data["names"]),
                                         dict(data["info"]))
            except (OSError, ValueError, KeyError, TypeError):
                bad.append(path.name)
                path.unlink(missing_ok=True)
        return found, bad
