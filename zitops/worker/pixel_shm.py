"""A worker's raw pixels reach the agent through shared memory (``/dev/shm``), not through the pipe.

Pickled into a Result, a 1024x1024 image is 3 MB that is copied into the
pickle, pushed through the pipe in 64 KiB pieces while the agent's event
loop reads it (the loop is blocked until the last piece is in), and copied
again when unpickled. Here the worker writes the pixels once into a file on
tmpfs and sends its name; the agent maps it (no copy), unlinks it at once
(the mapping lives on), and the encoder reads the pixels from the mapping.

Who removes what: the agent unlinks a file as it attaches it
(:func:`attach`). A worker killed between writing a file and the agent
reading its Result leaves the file behind; the next worker of the same agent
sweeps the files of workers that are gone, and of agents that are gone
(:func:`sweep`), when it starts; the same holds for the files a worker
makes ahead for its next job (:class:`PixelFiles`). Where ``/dev/shm`` is missing, too small or
full (a container's default 64 MB), :func:`put` answers None and the pixels
travel inline in the Result as before. Standard library only: both sides
import it.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from collections.abc import Callable
from pathlib import Path

SHM_DIR = Path("/dev/shm")
"""Where the pixel files live (tmpfs on Linux)."""

PREFIX = "zitops-px"
"""File names: ``zitops-px-<agent pid>-<worker pid>-<n>``."""

HEADROOM = 4
"""Write a file only while tmpfs has this many times its size free (others share /dev/shm)."""

PREPARE_MAX_BYTES = 64 * 2**20
"""The most a worker holds in pixel files made ahead for its next job (:class:`PixelFiles`)."""

_counter = itertools.count()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def put(data: bytes, directory: Path = SHM_DIR) -> str | None:
    """Write ``data`` to a new pixel file; its name, or None (send the pixels inline instead)."""
    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    return put_with(len(data), write, directory) if data else None


def put_with(nbytes: int, write: Callable[[int], None], directory: Path = SHM_DIR,
             ready: str | None = None) -> str | None:
    """A pixel file of ``nbytes`` that ``write(fd)`` fills; its name, or None (send the pixels inline).

    ``ready`` names a file made ahead (:class:`PixelFiles`): it is cut or
    grown to ``nbytes`` and written over, in pages tmpfs already holds.
    Otherwise a new file is made. A file that ends up another size than
    ``nbytes`` (a short write on a full tmpfs) is removed and answers None,
    as an OSError from ``write`` does.
    """
    if nbytes <= 0:
        if ready is not None:
            with contextlib.suppress(OSError):
                os.unlink(directory / ready)
        return None
    if ready is None:
        if not _room(directory, nbytes):
            return None
        name, flags = _new_name(), os.O_CREAT | os.O_EXCL | os.O_WRONLY
    else:
        name, flags = ready, os.O_WRONLY
    path = directory / name
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        if ready is not None:
            os.ftruncate(fd, nbytes)  # the pages below nbytes stay allocated
        write(fd)
        if os.fstat(fd).st_size != nbytes:
            raise OSError(f"pixel file {name}: {os.fstat(fd).st_size} bytes written, {nbytes} expected")
    except OSError:  # ENOSPC: the pixels go inline; nothing half-written stays behind
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    finally:
        os.close(fd)
    return name


def _room(directory: Path, nbytes: int) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= HEADROOM * nbytes


def _new_name() -> str:
    return f"{PREFIX}-{os.getppid()}-{os.getpid()}-{next(_counter)}"


class PixelFiles:
    """A worker's pixel files, with the next job's made ahead, between jobs.

    A new tmpfs file allocates and zeroes its pages while the pixels are
    written, on the response's path: packing a 1024x1024 image took 1.75 to
    2.03 ms into a new file and 0.77 to 0.96 ms into one made ahead on the dev
    box (benchmarks/results/cpu-2026-12-08-pixel-path.json). :meth:`prepare`
    runs after a job's Result is sent: it makes files of the sizes that job
    put, with their pages allocated (``posix_fallocate``), and the next job's
    pixels are written over them. They are named as any pixel file, so one
    left by a killed worker is swept by the next (:func:`sweep`); :meth:`close`
    removes them when the worker stops. At most PREPARE_MAX_BYTES wait at a time.
    """

    def __init__(self, directory: Path = SHM_DIR) -> None:
        self.directory = directory
        self.ready: list[tuple[str, int]] = []
        """Files made ahead and not yet used: (name, size)."""
        self._put: list[int] = []

    def put_with(self, nbytes: int, write: Callable[[int], None]) -> str | None:
        """As :func:`put_with`, into a file made ahead where one waits."""
        self._put.append(nbytes)
        ready = None
        if self.ready:
            pick = next((n for n, (_, size) in enumerate(self.ready) if size == nbytes), 0)
            ready = self.ready.pop(pick)[0]
        return put_with(nbytes, write, self.directory, ready)

    def prepare(self) -> None:
        """Make files for another job like the last (best effort: a refusal only costs the next job the wait)."""
        wanted, self._put = self._put, []
        held = sum(size for _, size in self.ready)
        for nbytes in wanted[len(self.ready):]:
            if held + nbytes > PREPARE_MAX_BYTES or not _room(self.directory, nbytes):
                return
            name = _new_name()
            try:
                fd = os.open(self.directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError:
                return
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError:  # tmpfs full, or no fallocate here: the next job makes its own files
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)
                return
            finally:
                os.close(fd)
            self.ready.append((name, nbytes))
            held += nbytes

    def close(self) -> None:
        """Remove the files made ahead."""
        for name, _ in self.ready:
            with contextlib.suppress(OSError):
                os.unlink(self.directory / name)
        self.ready.clear()


def attach(name: str, size: int, directory: Path = SHM_DIR) -> mmap.mmap:
    """Map a pixel file read-only and unlink it; the pixels stay readable until the map is closed.

    Raises OSError when the file is gone or shorter than ``size``.
    """
    if os.sep in name or not name.startswith(PREFIX + "-"):
        raise OSError(f"not a pixel file name: {name!r}")
    path = directory / name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.unlink(path)
        if os.fstat(fd).st_size < size:
            raise OSError(f"pixel file {name} holds {os.fstat(fd).st_size} bytes, {size} expected")
        return mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else mmap.mmap(-1, 1)
    finally:
        os.close(fd)


def sweep(agent_pid: int, directory: Path = SHM_DIR) -> int:
    """Remove pixel files of gone workers of ``agent_pid`` and of gone agents; how many were removed."""
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for path in entries:
        parts = path.name.removeprefix(PREFIX + "-").split("-")
        if not path.name.startswith(PREFIX + "-") or len(parts) != 3 or not all(p.isdigit() for p in parts):
            continue
        agent, worker = int(parts[0]), int(parts[1])
        if (agent == agent_pid and not _alive(worker)) or (agent != agent_pid and not _alive(agent)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed
