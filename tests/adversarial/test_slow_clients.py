"""Slow and idle clients against a real agent: 1,000 half-open connections, header and body deadlines."""

from __future__ import annotations

import contextlib
import resource
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_support import ALICE, Agent, auth  # noqa: E402

pytestmark = pytest.mark.slow

HALF_OPEN = 1000
DEADLINE_S = 8.0
"""server.header_timeout_s and body_timeout_s of the test agent: long enough that the
1,000 connections are all still open when the authenticated request goes in."""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = HALF_OPEN + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard open-file limit ({hard}) is below the {need} this test needs")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # the agent inherits it, then raises its own
    a = Agent(tmp_path_factory.mktemp("slow"),
              extra={"server": {"header_timeout_s": DEADLINE_S, "body_timeout_s": DEADLINE_S}})
    try:
        yield a.wait_ready()
    finally:
        a.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _half_open(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /v1/jobs/abc HTTP/1.1\r\nHo")  # a partial request, never finished
        socks.append(s)
    return socks


def _closed_by_agent(s: socket.socket) -> bytes:
    """Everything the agent sends until it closes the connection (it must, within the deadline)."""
    s.settimeout(DEADLINE_S + 30)  # generous: the assertion is that it closes, not when
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(4096):
            data += chunk
    return data


def test_an_authenticated_request_answers_while_1000_connections_hang(agent: Agent) -> None:
    job = agent.client.post("/v1/jobs", json={"prompt": "before"}, headers=auth(ALICE)).json()["id"]
    socks = _half_open(agent.port, HALF_OPEN)
    try:
        with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as fresh:
            fresh.sendall(f"GET /v1/jobs/{job} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ALICE}\r\n"
                          "Connection: close\r\n\r\n".encode())
            reply = _closed_by_agent(fresh)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert job.encode() in reply
        # The header deadline then closes every half-open connection, with a 408.
        closed = [_closed_by_agent(s) for s in socks[:50]]
        assert all(c.startswith(b"HTTP/1.1 408") for c in closed), {c[:40] for c in closed}
    finally:
        for s in socks:
            s.close()


def test_a_body_that_never_arrives_gets_a_408(agent: Agent) -> None:
    with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as s:
        s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ALICE}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":".encode())
        reply = _closed_by_agent(s)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert agent.client.get("/livez").status_code == 200


def test_a_silent_connection_is_closed(agent: Agent) -> None:
    with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as s:
        assert _closed_by_agent(s).startswith(b"HTTP/1.1 408")
