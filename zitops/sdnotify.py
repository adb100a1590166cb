"""sd_notify(3) over ``NOTIFY_SOCKET``, without libsystemd; a no-op outside systemd.

The agent sends ``READY=1`` when its first worker is ready, ``WATCHDOG=1``
only while the dispatcher loop and heartbeats are healthy (every
:meth:`Notifier.watchdog_interval_s` seconds), ``STATUS=`` with a one-line
summary and ``STOPPING=1`` when it drains. With ``NotifyAccess=main`` (the
default) systemd ignores messages from worker processes, so only the agent
process should hold a Notifier.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping

MAX_STATUS_CHARS = 200


class Notifier:
    """Sends ``KEY=value`` datagrams to systemd; every method returns False when disabled."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._env = dict(env)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.address = _address(env.get("NOTIFY_SOCKET", ""))

    @property
    def enabled(self) -> bool:
        """True when NOTIFY_SOCKET names a usable socket address."""
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message of ``KEY=value`` lines; False when disabled or the send failed."""
        if self.address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text or "=" in key or not key:
                raise ValueError(f"sd_notify field {key!r}: keys need no '=' and values must be one line")
            lines.append(f"{key}={text}")
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self.address)
            except OSError:
                # systemd restarted or the socket vanished: losing a ping is
                # better than crashing the agent; the next call retries.
                self._close_locked()
                return False
        return True

    def ready(self) -> bool:
        """READY=1: the service is up (the first worker is ready)."""
        return self.notify(READY=1)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is healthy right now."""
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """STATUS=<one line>, newlines folded and length capped."""
        line = " ".join(str(text).split())[:MAX_STATUS_CHARS]
        return self.notify(STATUS=line)

    def stopping(self) -> bool:
        """STOPPING=1: the service is shutting down."""
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        """RELOADING=1, e.g. while SIGHUP re-reads log levels (follow with ready())."""
        return self.notify(RELOADING=1)

    def watchdog_interval_s(self) -> float | None:
        """Half of WATCHDOG_USEC in seconds when it is meant for this process, else None."""
        usec = self._env.get("WATCHDOG_USEC", "")
        pid = self._env.get("WATCHDOG_PID", "")
        if not usec:
            return None
        if pid and pid.strip() != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2 / 1_000_000 if value > 0 else None

    def close(self) -> None:
        """Close the socket (a later notify reopens it)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: systemd writes it with a leading '@'.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not used by zitops deployments
