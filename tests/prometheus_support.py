"""A real Prometheus (Debian's ``prometheus``) on a free loopback port, scraping given targets.

Temp directory for its config and TSDB, a short scrape interval, and its
HTTP API for queries. Used by the dashboard test (every panel's query
against a real scrape of a real agent).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.api_support import free_port

BINARY = shutil.which("prometheus")


class Prometheus:
    """``prometheus`` scraping ``targets`` (host:port) as job ``job`` every ``interval``."""

    def __init__(self, tmp: Path, job: str, targets: list[str], interval: str = "1s") -> None:
        assert BINARY is not None, "prometheus missing: apt-get install prometheus"
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": job, "scrape_interval": interval, "scrape_timeout": interval,
                                "static_configs": [{"targets": targets}]}],
        }))
        self.log = open(tmp / "prometheus.out", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_up(self, timeout_s: float = 60) -> None:
        """Until the API answers and every target has been scraped up at least once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError, AssertionError, ValueError):
                if self.query("up") and all(float(s["value"][1]) == 1 for s in self.query("up")):
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError("prometheus never scraped its targets up:\n" + (self.tmp / "prometheus.out").read_text())

    def stop(self) -> None:
        """Terminate it, kill it if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
