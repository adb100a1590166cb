"""The disk budget: a free-space floor for new jobs, and output retention by total bytes.

``disk.min_free_mib``: a job is refused (507) at submit while free space
under the state or output directory is below the floor, checked with
``os.statvfs`` and cached for :data:`FREE_CACHE_S`, so a burst of submits
costs one syscall. ``queue.max_output_bytes``: beside the age rule
(``queue.result_ttl_s``), the retention round deletes the oldest output
files until they fit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from zitops.errors import DiskFull

FREE_CACHE_S = 1.0
"""How long one free-space reading is trusted."""


def free_mib(path: Path) -> float:
    """Free space for an unprivileged writer under ``path``, in MiB."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def over_budget(files: Iterable[tuple[str, float, int]], max_bytes: int) -> list[str]:
    """From (name, mtime, size): the names to delete, oldest first, so the rest total at most ``max_bytes``."""
    ordered = sorted(files, key=lambda f: (f[1], f[0]))
    total = sum(size for _, _, size in ordered)
    doomed: list[str] = []
    for name, _, size in ordered:
        if total <= max_bytes:
            break
        doomed.append(name)
        total -= size
    return doomed


def prune_outputs(output_dir: Path, max_bytes: int, keep: Collection[str] = frozenset()) -> list[str]:
    """Delete the oldest files under ``output_dir`` past ``max_bytes`` in all; return their names.

    ``keep``: files never deleted (images held for the object store: they are the only copy); they still count.
    """
    files: list[tuple[str, float, int]] = []
    with os.scandir(output_dir) as entries:
        for e in entries:
            try:
                if e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    files.append((e.name, st.st_mtime, st.st_size))
            except OSError:  # deleted meanwhile
                continue
    kept = sum(size for name, _, size in files if name in keep)
    doomed = over_budget([f for f in files if f[0] not in keep], max_bytes - kept)
    for name in doomed:
        (output_dir / name).unlink(missing_ok=True)
    return doomed


class FreeSpaceFloor:
    """Refuses new work while any of ``dirs`` has less than ``min_free_mib`` free (0: never)."""

    def __init__(self, dirs: Iterable[Path], min_free_mib: int) -> None:
        self.dirs = list(dict.fromkeys(dirs))
        self.min_free_mib = min_free_mib
        self._checked = float("-inf")
        self._low: str | None = None

    def low(self) -> str | None:
        """Why free space is below the floor now (cached briefly), or None."""
        if self.min_free_mib <= 0:
            return None
        now = time.monotonic()
        if now - self._checked >= FREE_CACHE_S:
            self._checked, self._low = now, None
            for d in self.dirs:
                try:
                    free = free_mib(d)
                except OSError:  # a missing dir is reported by whatever writes there
                    continue
                if free < self.min_free_mib:
                    self._low = (f"free space under {d} is {free:.0f} MiB, below disk.min_free_mib "
                                 f"({self.min_free_mib} MiB); free space there, or lower disk.min_free_mib")
                    break
        return self._low

    def check(self) -> None:
        """DiskFull (507) while below the floor."""
        low = self.low()
        if low is not None:
            raise DiskFull(f"new jobs refused: {low}")
