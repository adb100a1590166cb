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
        self.path = path
        self._marks = 0
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

    def mark(self) -> int:
        """Send a marker datagram and wait until it is read; the index after it in ``lines``.

        The socket delivers in order, so every datagram sent before this call sits before the mark.
        """
        self._marks += 1
        text = f"MARK={self._marks}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(text.encode(), self.path)
        wait_until(lambda: any(line == text for _, line in list(self.lines)), 5, what=f"marker {text}")
        return next(i for i, (_, line) in enumerate(list(self.lines)) if line == text) + 1

    def times(self, line: str) -> list[float]:
        """When ``line`` arrived."""
        return [t for t, text in list(self.lines) if text == line]

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_ready_then_watchdog_pings_that_stop_while_the_dispatch_step_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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

        def broken() -> None:
            raise RuntimeError("dispatch step broken on purpose")

        def withheld() -> int:
            return rt.lt.call(lambda: rt.d.notify.pings_withheld)

        rt.lt.call(monkeypatch.setattr, rt.d, "dispatch", broken)
        wait_until(lambda: not rt.ready()[0], 5, what="readiness to notice the failing step")
        assert any("dispatcher loop failing" in r and "RuntimeError: dispatch step broken on purpose" in r
                   for r in rt.ready()[1])
        # From the first round that withheld its ping on, no ping may be sent: every
        # datagram before the mark was sent before that round.
        wait_until(lambda: withheld() >= 1, 5, what="a watchdog round to withhold its ping")
        first, sent = withheld(), rt.lt.call(lambda: rt.d.notify.pings_sent)
        a = listener.mark()
        wait_until(lambda: withheld() >= first + 3, 10, what="three more rounds while the step fails")
        b = listener.mark()
        between = [text for _, text in listener.lines[a:b]]
        assert "WATCHDOG=1" not in between, "pings continued while the dispatch step failed"
        assert any(text.startswith("STATUS=") for text in between)
        assert rt.lt.call(lambda: rt.d.notify.pings_sent) == sent
        # Recorded once for the whole failing stretch, not once per tick.
        assert rt.lt.call(lambda: rt.d.health.failed_ticks) >= 3
        recorded = [f for f in rt.d.failures.recent(50) if f["kind"] == "dispatcher"]
        assert len(recorded) == 1 and "dispatch step broken on purpose" in recorded[0]["message"]

        rt.lt.call(monkeypatch.undo)
        wait_until(lambda: rt.ready()[0], 5, what="readiness once the step works again")
        wait_until(lambda: "WATCHDOG=1" in [text for _, text in listener.lines[b:]], 5,
                   what="pings to resume after the step recovers")
        rt.lt.run(rt.d.drain(5.0))
        assert listener.times("STOPPING=1")
    finally:
        rt.close()
        listener.close()
