"""Helpers for the job store tests: bounded polling, a listener on its own thread, a child process."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from zitops.agent.storage.pg_listen import Notice

T = TypeVar("T")


def poll_until(probe: Callable[[], T | None], timeout_s: float = 30.0, every_s: float = 0.05) -> T:
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
    from zitops.agent.storage.store_pg import PgJobStore
    from zitops.engine.request import GenerationRequest

    barrier.wait(30)
    try:
        store = PgJobStore(url, password_file=password_file, agent_id=agent_id)
        store.add(GenerationRequest(prompt=agent_id, seeds=(1,), width=64, height=64, steps=2))
        store.close()
        results.put((agent_id, "ok"))
    except Exception as exc:  # reported to the test, which asserts "ok"
        results.put((agent_id, f"{type(exc).__name__}: {exc}"))
