"""Input-image decoding: one token's share of the decode pool, and a client that hangs up stops it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from starlette.requests import Request

from zitops.agent.http import image_input
from zitops.agent.http.api_common import ClientGone
from zitops.agent.http.tenants import CALLER_KEY, Caller
from zitops.errors import QueueFull


def _request(owner: str, gone: asyncio.Event | None = None) -> Request:
    async def receive() -> dict[str, Any]:
        if gone is None:
            await asyncio.Event().wait()  # never a message: the client stays
        else:
            await gone.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": [],
             "state": {CALLER_KEY: Caller(owner=owner, admin=False)}}
    return Request(scope, receive)


def test_a_token_holds_one_decode_thread_and_the_other_tenant_gets_the_other() -> None:
    release = threading.Event()
    started: list[str] = []

    def slow(name: str) -> str:  # a decode that runs until the test lets it go
        started.append(name)
        release.wait(60)
        return name

    async def scenario() -> None:
        a1 = asyncio.create_task(image_input.decode_off_loop("init_image", slow, "a1", request=_request("A")))
        while not started:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="init_image: this token already has 1 image"):
            await image_input.decode_off_loop("init_image", slow, "a2", request=_request("A"))
        b = asyncio.create_task(image_input.decode_off_loop("init_image", slow, "b", request=_request("B")))
        while len(started) < 2:  # B's decode runs beside A's, on the pool's other thread
            await asyncio.sleep(0.01)
        release.set()
        assert await a1 == "a1" and await b == "b"
        assert image_input._DECODING == {}

    asyncio.run(scenario())


def test_a_client_that_hangs_up_stops_waiting_and_its_queued_decode_never_runs() -> None:
    hold = threading.Event()
    ran: list[str] = []

    def busy(name: str) -> str:
        ran.append(name)
        hold.wait(60)
        return name

    async def scenario() -> None:
        # Both pool threads busy (two tenants), so C's decode waits for a thread; then C hangs up.
        others = [asyncio.create_task(image_input.decode_off_loop("image", busy, n, request=_request(n)))
                  for n in ("A", "B")]
        while len(ran) < 2:
            await asyncio.sleep(0.01)
        gone = asyncio.Event()
        c = asyncio.create_task(image_input.decode_off_loop("image", busy, "C", request=_request("C", gone)))
        await asyncio.sleep(0)
        gone.set()
        with pytest.raises(ClientGone, match="image: the client disconnected"):
            await c
        hold.set()
        assert sorted([await t for t in others]) == ["A", "B"]
        assert sorted(ran) == ["A", "B"]  # C's decode never started
        assert image_input._DECODING == {}

    asyncio.run(scenario())
