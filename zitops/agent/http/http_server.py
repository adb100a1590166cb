"""uvicorn, bounded against slow and idle clients.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and can
refuse work past ``limit_concurrency``, but it waits forever for a request's
headers or body. A client that sends half a request line and stops holds a
file descriptor for as long as it likes; a thousand of them exhaust the
process. :class:`DeadlineH11Protocol` gives every request a deadline for its
headers (from the first byte, or from the connection) and one for its body
(from the end of the headers): past either, the client gets a 408 and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from zitops.config import ServerSettings
from zitops.logbook.logs import get_logger

log = get_logger("zitops.agent.http")

TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n")


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines (set on a subclass by :func:`protocol_class`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._phase = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline: a connection that never sends a request is closed too."""
        super().connection_made(transport)
        self._arm("headers", self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed h11, then move the deadline to the phase the request is in now."""
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # Part of a request line or headers (a new request on a kept-alive
            # connection too): the header clock runs from its first byte.
            if self._phase != "headers":
                self._arm("headers", self.header_timeout_s)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.body_timeout_s)
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        """Between requests uvicorn's keep-alive timeout applies, not ours."""
        self._disarm()
        super().on_response_complete()

    def _expired(self, phase: str) -> None:
        self._deadline = None
        self._phase = None
        if self.transport.is_closing():
            return
        started = phase == "body" and self.cycle is not None and self.cycle.response_started
        log.debug("closing a slow client", phase=phase, client=str(self.client))
        if not started:
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_class(settings: ServerSettings) -> type[DeadlineH11Protocol]:
    """A DeadlineH11Protocol subclass with ``settings``' deadlines."""
    return type("ZitopsH11Protocol", (DeadlineH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s, "body_timeout_s": settings.body_timeout_s,
    })


def server_config(app: Any, host: str, port: int, settings: ServerSettings,
                  graceful_s: float) -> uvicorn.Config:
    """The uvicorn Config of the agent: deadlines, connection cap, keep-alive, trusted proxies.

    X-Forwarded-Proto/For are read only from ``server.forwarded_allow_ips``; with none
    configured they are ignored (uvicorn's own default trusts 127.0.0.1, i.e. any local client).
    """
    trusted = list(settings.forwarded_allow_ips)
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, lifespan="on", http=protocol_class(settings),
        timeout_graceful_shutdown=int(graceful_s), limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog, timeout_keep_alive=int(max(1, round(settings.keep_alive_s))),
        proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None,
    )


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (never past the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft
