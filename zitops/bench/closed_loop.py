"""Closed-loop load for the benchmarks: C clients, each posting its next request when its last one returns.

Shared by ``benchmarks/goodput.py`` and ``benchmarks/multi_gpu.py``. torch-free (httpx and threads).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx


def one(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[int, float]:
    """(HTTP status, seconds) of one synchronous generation; status 0 when the request itself failed."""
    t0 = time.perf_counter()
    try:
        status = client.post(f"{url}/v1/images/generations", json=body).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.perf_counter() - t0


def closed_loop(url: str, body: dict[str, Any], clients: int, requests: int, timeout_s: float,
                seed0: int) -> tuple[list[tuple[int, float]], float]:
    """``requests`` generations from ``clients`` closed-loop clients; (status, seconds) each, and the wall time.

    The clients take the next request number from one counter; request ``n`` has seed ``seed0 + n``.
    """
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    todo = iter(range(requests))

    def loop() -> None:
        with httpx.Client(timeout=timeout_s) as client:
            while True:
                with lock:
                    n = next(todo, None)
                if n is None:
                    return
                out = one(client, url, {**body, "seed": seed0 + n})
                with lock:
                    results.append(out)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0
