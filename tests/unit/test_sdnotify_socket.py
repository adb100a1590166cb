"""zitops.sdnotify against a real AF_UNIX datagram socket, as systemd would hold it."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from zitops.sdnotify import Notifier


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: AF_UNIX paths are limited to 107 bytes.
    tmp = tempfile.mkdtemp(prefix="zsd", dir="/tmp")
    path = os.path.join(tmp, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_messages_arrive_as_systemd_expects(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready() and _recv(sock) == "READY=1\n"
    assert n.watchdog() and _recv(sock) == "WATCHDOG=1\n"
    assert n.status("2/2 workers ready\nqueue 0") and _recv(sock) == "STATUS=2/2 workers ready queue 0\n"
    assert n.status("x" * 1000) and len(_recv(sock)) == len("STATUS=\n") + 200
    assert n.notify(READY=1, STATUS="up") and _recv(sock) == "READY=1\nSTATUS=up\n"
    assert n.stopping() and _recv(sock) == "STOPPING=1\n"
    n.close()


def test_abstract_socket() -> None:
    name = f"zitops-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert _recv(sock) == "READY=1\n"
    finally:
        sock.close()


def test_outside_systemd_everything_is_a_no_op() -> None:
    for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}):
        n = Notifier(env)
        assert not n.enabled
        assert not n.ready() and not n.watchdog() and not n.status("x") and not n.stopping()
        assert n.watchdog_interval_s() is None


def test_a_vanished_socket_does_not_raise(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready()
    Path(path).unlink()
    assert n.watchdog() is False
    sock2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock2.bind(path)  # systemd came back on the same path
    sock2.settimeout(5)
    try:
        assert n.watchdog() and _recv(sock2) == "WATCHDOG=1\n"
    finally:
        sock2.close()


def test_fields_must_be_one_line(notify_socket: tuple[socket.socket, str]) -> None:
    n = Notifier({"NOTIFY_SOCKET": notify_socket[1]})
    with pytest.raises(ValueError, match="one line"):
        n.notify(STATUS="a\nb")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/run/x", **env}).watchdog_interval_s() == expected
