"""The disk budget against a real agent: synchronous results leave no files unless asked (A1111 save_images,
OpenAI url), and outputs are capped by total bytes (queue.max_output_bytes), oldest first."""

from __future__ import annotations

import ctypes
import io
import os
import struct
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_support import ALICE, Agent, auth, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

CAP = 1024 * 1024


def _files(agent: Agent) -> list[Path]:
    return sorted((agent.tmp / "run" / "output_dir").glob("*.png"))


class _Creations:
    """The names created in (or moved into) a directory, from the kernel's inotify queue: nothing is missed."""

    IN_MOVED_TO, IN_CREATE, IN_NONBLOCK = 0x80, 0x100, os.O_NONBLOCK

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, bytes(directory), self.IN_CREATE | self.IN_MOVED_TO) >= 0

    def take(self) -> list[str]:
        names: list[str] = []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return names
        pos = 0
        while pos < len(data):
            _wd, _mask, _cookie, size = struct.unpack_from("iIII", data, pos)
            names.append(data[pos + 16:pos + 16 + size].rstrip(b"\0").decode())
            pos += 16 + size
        return names

    def close(self) -> None:
        os.close(self.fd)


def test_synchronous_results_are_kept_only_when_asked(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    try:
        agent.wait_ready()
        created = _Creations(agent.tmp / "run" / "output_dir")
        a1111 = {"prompt": "sync", "width": 64, "height": 64, "steps": 2}
        r = agent.client.post("/sdapi/v1/txt2img", json=a1111, headers=auth(ALICE))
        assert r.status_code == 200 and len(r.json()["images"]) == 1
        r = agent.client.post("/v1/images/generations", json={"prompt": "b64", "size": "64x64"}, headers=auth(ALICE))
        assert r.status_code == 200 and r.json()["data"][0]["b64_json"]
        png = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(png, "PNG")
        r = agent.client.post("/v1/images/edits", files={"image": ("in.png", png.getvalue(), "image/png")},
                              data={"prompt": "an edit", "size": "64x64"}, headers=auth(ALICE))
        assert r.status_code == 200 and r.json()["data"][0]["b64_json"]
        assert _files(agent) == []  # the three responses carried the images; nothing kept
        # Not even written and deleted: the bytes went from the encoder to the response (the events are queued
        # by the kernel before each response is sent, so reading them now misses none).
        assert created.take() == []
        r = agent.client.post("/sdapi/v1/txt2img", json={**a1111, "save_images": True}, headers=auth(ALICE))
        assert r.status_code == 200 and len(_files(agent)) == 1
        assert [n for n in created.take() if not n.startswith(".")] == [_files(agent)[0].name]  # the watch sees
        created.close()
        r = agent.client.post("/v1/images/generations", json={"prompt": "url", "size": "64x64",
                                                              "response_format": "url"}, headers=auth(ALICE))
        url = r.json()["data"][0]["url"]
        assert agent.client.get(url, headers=auth(ALICE)).status_code == 200 and len(_files(agent)) == 2
    finally:
        agent.stop()


def test_outputs_past_the_byte_cap_are_deleted_oldest_first(tmp_path: Path) -> None:
    # ttl 20 s: the retention round runs every 2 s. Full-noise 256x256 PNGs are about 190 KiB each.
    agent = Agent(tmp_path, sets=["queue.result_ttl_s=20", f"queue.max_output_bytes={CAP}", "queue.depth=10"],
                  extra={"engine": {"kind": "faulty", "faults": {"inner": "synthetic", "pixels": "noise",
                                                                 "job_seconds": 0.05}}})
    try:
        agent.wait_ready()
        ids = []
        for n in range(8):
            r = agent.client.post("/v1/jobs", json={"prompt": f"noise {n}", "width": 256, "height": 256},
                                  headers=auth(ALICE))
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
            assert agent.wait_job(ids[-1], ALICE)["status"] == "succeeded"
        wait_for(lambda: sum(p.stat().st_size for p in _files(agent)) <= CAP, 30, "outputs under the cap", agent)
        assert agent.client.get(f"/v1/jobs/{ids[0]}/images/0", headers=auth(ALICE)).status_code == 404
        assert agent.client.get(f"/v1/jobs/{ids[-1]}/images/0", headers=auth(ALICE)).status_code == 200
    finally:
        agent.stop()
