"""Child processes with a pipe: start one, describe how it exited, SIGKILL it.

The small process mechanics the pool and its standby spares share (uvicorn's
``_subprocess``): nothing here knows what the child runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any


def start_child(ctx: SpawnContext, target: Callable[..., Any], name: str,
                args: tuple[Any, ...]) -> tuple[BaseProcess, Connection]:
    """Start ``target(child_end, *args)`` in a spawned process; return it and the parent's end of its pipe.

    Raises OSError (out of fds or memory) with both pipe ends closed.
    """
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=target, name=name, args=(child, *args))
    try:
        proc.start()
    except OSError:
        parent.close()
        child.close()
        raise
    child.close()  # so the child sees EOF, and we see it exit, when either side dies
    return proc, parent


def exit_text(code: int | None) -> str:
    """How a process ended, for events and /status: ``exit code N`` or ``killed by SIGNAME``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def sigkill(proc: BaseProcess) -> None:
    """SIGKILL ``proc`` unless it has exited already."""
    if proc.exitcode is None and proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


async def stop_children(live: Callable[[], list[BaseProcess]], waits: tuple[float, float, float],
                        exited: asyncio.Event | None = None) -> None:
    """Wait ``waits[0]`` for ``live()`` to empty; SIGTERM the rest, wait; SIGKILL the rest, wait.

    ``exited`` is set whenever one exits (else ``live()`` is polled); the
    caller has already asked them to stop.
    """
    steps: tuple[Callable[[BaseProcess], None] | None, ...] = (None, BaseProcess.terminate, BaseProcess.kill)
    for step, wait_s in zip(steps, waits, strict=True):
        if step is not None:
            for proc in live():
                step(proc)
        deadline = time.monotonic() + wait_s
        while live() and time.monotonic() < deadline:
            if exited is None:
                await asyncio.sleep(0.02)
                continue
            exited.clear()
            try:
                await asyncio.wait_for(exited.wait(), max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
        if not live():
            return
