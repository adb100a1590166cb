"""Wake-ups from PostgreSQL's LISTEN/NOTIFY, on one async connection of its own.

The jobs table's triggers (sql/migrations/0001_jobs.sql) notify
``zitops_queued`` when a job can be claimed and ``zitops_done`` when one
reaches a final state. An agent with a free worker claims on the first; a
synchronous request waiting on agent B learns on the second that agent A
finished its job. Notifications sent while the connection was down are
lost, so after every (re)connect the listener yields a ``resync`` notice:
look at the store once, then go back to waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg import sql

from zitops.agent.storage.pg_connect import PgConnector
from zitops.errors import StoreUnavailable

QUEUED = "zitops_queued"
"""Channel: payload is the id of a job that can be claimed."""
DONE = "zitops_done"
"""Channel: payload is ``<job id> <final status>``."""

NoticeKind = Literal["queued", "done", "resync"]


@dataclass(frozen=True)
class Notice:
    """One wake-up: a claimable job, a finished job, or "you may have missed some"."""

    kind: NoticeKind
    job_id: str = ""
    status: str = ""


def parse(channel: str, payload: str) -> Notice | None:
    """The notice for one notification (None for a channel this module does not know)."""
    if channel == QUEUED:
        return Notice("queued", payload)
    if channel == DONE:
        job_id, _, status = payload.partition(" ")
        return Notice("done", job_id, status)
    return None


class PgListener:
    """An async iterator of :class:`Notice`; reconnects by itself while the server is away."""

    def __init__(self, connector: PgConnector, channels: tuple[str, ...] = (QUEUED, DONE),
                 retry_s: float = 1.0) -> None:
        self.connector = connector
        self.channels = channels
        self.retry_s = retry_s
        self.last_error: str | None = None
        """Why the last connection ended or failed (None while listening)."""

    def __aiter__(self) -> AsyncIterator[Notice]:
        return self.listen()

    async def listen(self) -> AsyncIterator[Notice]:
        """Yield notices forever: ``resync`` after each (re)connect, then each notification."""
        while True:
            conn: psycopg.AsyncConnection[object] | None = None
            try:
                conn = await self.connector.connect_async()
                for channel in self.channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self.last_error = None
                yield Notice("resync")
                async for note in conn.notifies():
                    notice = parse(note.channel, note.payload)
                    if notice is not None:
                        yield notice
            except (psycopg.Error, StoreUnavailable) as exc:
                self.last_error = str(self.connector.unavailable(exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
            await asyncio.sleep(self.retry_s)
