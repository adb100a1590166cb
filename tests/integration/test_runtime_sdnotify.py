"""sd_notify over a real unix datagram socket that the test owns."""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime_support import Runtime, runtime_config, wait_until  # noqa: E402

from zitops.sdnotify import Notifier  # noqa: E402

pytestmark = pytest.mark.slow


class Listener:
    """Collects (monotonic time, line) for every datagram sent to the socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.lines: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.lines.extend((now, line) for line in data.decode().splitlines())

    def times(self, line: str) -> list[float]:
        """When ``line`` arrived."""
        return [t for t, text in list(self.lines) if text == line]

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_ready_then_watchdog_pings_that_stop_while_the_dispatcher_stalls(tmp_path: Path) -> None:
    sock_dir = tempfile.mkdtemp(prefix="zn", dir="/tmp")  # short: AF_UNIX paths are limited
    path = f"{sock_dir}/notify"
    listener = Listener(path)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})  # ping every 0.2 s
    rt = Runtime(runtime_config(tmp_path), notifier=notifier)
    try:
        wait_until(lambda: len(listener.times("WATCHDOG=1")) >= 3, 10, what="watchdog pings")
        (ready_at,) = listener.times("READY=1")
        assert ready_at <= listener.times("WATCHDOG=1")[0]
        assert any(text.startswith("STATUS=1/1 workers ready") for _, text in listener.lines)

        stalled_at = time.monotonic()
        rt.lt.call(rt.d.stall_for_tests, 4.0)
        wait_until(lambda: not rt.ready()[0], 5, what="readiness to notice the stall")
        assert any("dispatcher loop stalled" in r for r in rt.ready()[1])
        time.sleep(max(0.0, stalled_at + 4.0 - time.monotonic()))
        pings = listener.times("WATCHDOG=1")
        during = [t for t in pings if stalled_at + 2.5 <= t <= stalled_at + 3.9]
        assert during == [], "pings continued while the dispatcher loop was stalled"
        assert any(stalled_at + 2.5 <= t for t, text in listener.lines if text.startswith("STATUS="))
        wait_until(lambda: any(t > stalled_at + 4.0 for t in listener.times("WATCHDOG=1")), 5,
                   what="pings to resume after the stall")
        rt.lt.run(rt.d.drain(5.0))
        assert listener.times("STOPPING=1")
    finally:
        rt.close()
        listener.close()
