"""Edges of the runtime that need no worker process: binding, the CLI, one job in-process."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PIL import Image

from tests.runtime_support import request, runtime_config
from zitops.agent.dispatch.images import attach_pixels, write_images
from zitops.agent.server import bind
from zitops.cli import main
from zitops.engine.factory import create_engine
from zitops.engine.output import encode_image
from zitops.errors import ConfigError
from zitops.worker.process import run_job
from zitops.worker.protocol import Job


def test_bind_refuses_a_taken_port_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}: .*pick a free port"):
            bind(runtime_config(tmp_path, port=port))


def test_agent_command_requires_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["agent"])
    assert exit_.value.code == 1
    assert "--config FILE is required" in capsys.readouterr().err


def test_run_job_returns_pixels_the_agent_writes_under_server_names(tmp_path: Path) -> None:
    cfg = runtime_config(tmp_path)
    engine = create_engine(cfg, incarnation=0)
    engine.setup("cpu")
    out = tmp_path / "out"
    out.mkdir()
    result = run_job(engine, Job("abc123", request(batch=2, output_format="webp").to_dict()))
    assert result.output_format == "webp" and [(r.width, r.height) for r in result.images] == [(64, 64)] * 2
    assert [r.params["seed"] for r in result.images] == [1, 2]
    images = attach_pixels(result.images)  # as the agent does when the Result arrives (pixels via /dev/shm)
    names = write_images(out, result.job_id, images, result.output_format, encode_image)
    assert names == ("abc123-0.webp", "abc123-1.webp")
    assert sorted(p.name for p in out.iterdir()) == ["abc123-0.webp", "abc123-1.webp"]  # no temp files left
    with Image.open(out / "abc123-1.webp") as img:
        assert img.format == "WEBP" and img.size == (64, 64)
    assert result.info["seeds"] == [1, 2] and result.info["transformer_forwards"] == 2
    # The real engine on the CPU reports its allocator as zeros, never as simulated numbers.
    assert result.info["memory"]["simulated"] is False and result.info["memory"]["allocated_mib"] == 0.0


def test_accepted_connections_have_nagle_off(tmp_path: Path) -> None:
    """Without TCP_NODELAY every keep-alive response waits for a delayed ACK (~40 ms)."""
    import asyncio

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = bind(runtime_config(tmp_path, port=port))
    seen: list[int] = []

    async def main_() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("socket")
            seen.append(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            writer.close()

    asyncio.run(main_())
    assert seen and seen[0] != 0
