"""A gated hot spare's side of the pool's gate: before each piece of build work, wait while it is closed.

A hot spare builds (loads, compiles, warms up) on the GPU that serves jobs. With
``watchdog.spare_build: idle`` the pool opens the spare's gate only while the
slot's serving worker is idle (:mod:`zitops.agent.workers.spare_gate` decides;
``Gate`` messages carry it). The spare calls :meth:`BuildGate.wait` before its
engine set-up, before each warm-up generation and after each of its denoising
steps, so a job that arrives stops the build within one step (a compile that
has begun runs to its end). While it waits it reads only its pipe: no GPU work.
It tells the pool when it stops and when it goes on (``GateWait``), with how
many pieces of work it has done, so /status and the event history show it.

Other messages that arrive while building (a ClearCache, a stale Steer) are kept
for the worker's main loop, in order, as a job's steering does; a Shutdown ends
the build (:class:`BuildStopped`) and the worker exits 0.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from zitops.worker.protocol import FromWorker, Gate, GateWait, Shutdown, ToWorker


class BuildStopped(Exception):
    """A Shutdown reached a spare still building: it exits without finishing."""


class BuildGate:
    """The gate as this spare last heard it, and the wait at it."""

    def __init__(self, conn: Connection, send: Callable[[FromWorker], None], open_: bool,
                 pending: list[ToWorker], log: Any = None) -> None:
        self.conn = conn
        self.send = send
        self.open = open_
        self.pending = pending
        self.log = log
        self.done = 0  # pieces of work begun past the gate
        self.pauses = 0

    def _read(self, block: bool) -> None:
        try:
            while block or self.conn.poll():
                msg = self.conn.recv()
                block = False
                if isinstance(msg, Gate):
                    self.open = msg.open
                elif isinstance(msg, Shutdown):
                    raise BuildStopped(msg.reason)
                else:
                    self.pending.append(msg)
        except (EOFError, OSError) as exc:  # the agent is gone: nobody wants this spare
            raise BuildStopped("the agent is gone") from exc

    def wait(self) -> None:
        """Return once the gate is open (at once when it is); count the piece of work that follows."""
        self._read(block=False)
        if not self.open:
            self.pauses += 1
            self.send(GateWait(paused=True, done=self.done))
            if self.log is not None:
                self.log.info("hot spare paused: the slot is serving", done=self.done)
            while not self.open:
                self._read(block=True)
            self.send(GateWait(paused=False, done=self.done))
            if self.log is not None:
                self.log.info("hot spare goes on building", done=self.done)
        self.done += 1

    def step(self, step: int, total: int) -> None:
        """A warm-up generation's step callback (a ProgressFn): the gate between two steps."""
        del step, total
        self.wait()
