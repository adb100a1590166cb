"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that fails the first delivery of each message.

Shared by the webhook tests of one agent (test_webhooks_agent.py) and of a
fleet (test_fleet_results.py). Signatures are checked by the tests with PyPI's
``standardwebhooks``, never with zitops's own code.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SECRET = "whsec_" + base64.b64encode(b"zitops-webhook-test-key-0123456789").decode()


@dataclass
class Receiver:
    """A webhook receiver: answers 500 to the first delivery of each message id (and to every one
    while ``down``), 204 after; keeps every request it got."""

    down: bool = False
    got: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliveries(self, job_id: str) -> list[tuple[int, dict[str, str], bytes]]:
        """(answered status, headers, body) of each request about ``job_id``, in order."""
        with self.lock:
            return [g for g in self.got if json.loads(g[2])["data"]["id"] == job_id]


def serve(receiver: Receiver) -> tuple[ThreadingHTTPServer, int]:
    """The receiver on a free 127.0.0.1 port, in a thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                seen = any(h.get("webhook-id") == headers.get("webhook-id") for _, h, _ in receiver.got)
                status = 500 if receiver.down or not seen else 204
                receiver.got.append((status, headers, body))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def secret_file(path: Path) -> Path:
    """SECRET in a file of mode 600, as webhooks.secret_file wants it."""
    path.write_text(SECRET + "\n")
    os.chmod(path, 0o600)
    return path
