"""The VRAM ring buffer and the console's routes over a real uvicorn (no browser)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api_support import HTTP, MemService, make_config, serve
from zitops.agent.http.console import STATIC_DIR
from zitops.agent.workers.vram_history import VramHistory, samples_from

TOKEN = "console-unit-token-0123456789"


@dataclass(frozen=True)
class Mem:
    allocated_mib: float
    reserved_mib: float
    device_used_mib: float = 0.0
    device_total_mib: float = 0.0


@dataclass(frozen=True)
class Slot:
    gpu: int | None
    state: str
    memory: Mem | None


@dataclass(frozen=True)
class Gpu:
    index: int
    used_mib: float
    total_mib: float


def test_samples_sum_live_workers_per_device_and_prefer_nvml() -> None:
    slots = [Slot(0, "ready", Mem(1000, 1200)), Slot(0, "busy", Mem(500, 600)), Slot(1, "dead", Mem(9, 9)),
             Slot(None, "ready", Mem(10, 20, 300, 16384)), Slot(2, "starting", None)]
    got = {s.gpu: s for s in samples_from(5.0, [Gpu(0, 4000, 24576), Gpu(1, 100, 24576)], slots)}
    assert list(got) == ["0", "1", "cpu"]
    assert (got["0"].allocated_mib, got["0"].reserved_mib, got["0"].used_mib, got["0"].used_from) == \
        (1500, 1800, 4000, "nvml")
    # A dead worker's last report is stale: NVML alone describes GPU 1.
    assert got["1"].allocated_mib is None and got["1"].used_mib == 100
    assert (got["cpu"].used_mib, got["cpu"].total_mib, got["cpu"].used_from) == (300, 16384, "worker")


def test_history_is_bounded_in_time_and_count() -> None:
    h = VramHistory(window_s=100, max_samples=10)  # at most one sample per 10 s
    slot = [Slot(0, "ready", Mem(1, 2))]
    for t in range(0, 300, 2):
        h.record([Gpu(0, 3, 8)], slot, now=float(t))
    snap = h.snapshot(now=298.0)["gpus"]["0"]
    assert len(snap["t"]) <= 10
    assert min(snap["t"]) >= 198 and max(snap["t"]) == 290
    assert snap["allocated_mib"][-1] == 1 and snap["used_mib"][-1] == 3 and snap["total_mib"] == 8
    assert h.snapshot(now=10_000.0)["gpus"] == {}


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemService, str]]:
    tmp = tmp_path_factory.mktemp("console")
    svc = MemService(tmp / "out")
    with serve(make_config(tmp), svc, frozenset({TOKEN})) as url:
        yield svc, url


def test_page_and_assets_load_without_a_token_data_does_not(authed: tuple[MemService, str]) -> None:
    svc, url = authed
    page = HTTP.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for src in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        asset = HTTP.get(f"{url}/{src}")
        assert asset.status_code == 200, src
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    for path in ("/v1/vram/history", "/status", "/docs", "/static/../console.py", "/static/nope.js"):
        assert HTTP.get(url + path).status_code == 401, path
    svc.history.record([Gpu(0, 3000, 8000)], [Slot(0, "ready", Mem(1000, 1500))], now=1e9)
    body = HTTP.get(url + "/v1/vram/history", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert body["window_s"] == 3600
    # The record above is far in the past (1e9), so the window holds nothing; a fresh one shows.
    svc.history.record([Gpu(0, 3000, 8000)], [Slot(0, "ready", Mem(1000, 1500))])
    body = HTTP.get(url + "/v1/vram/history", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert body["gpus"]["0"]["reserved_mib"] == [1500] and body["gpus"]["0"]["used_from"] == "nvml"


def test_docs_pages_use_vendored_assets_only(authed: tuple[MemService, str]) -> None:
    _, url = authed
    h = {"Authorization": f"Bearer {TOKEN}"}
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = HTTP.get(url + path, headers=h)
        assert r.status_code == 200 and asset in r.text
        urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert urls and all(u.startswith("/static/vendor/") for u in urls), urls
        assert "cdn" not in r.text and "googleapis" not in r.text
        assert "img-src 'self' data:;" in r.headers["content-security-policy"]
        for u in urls:
            assert HTTP.get(url + u).status_code == 200, u


def test_every_vendored_file_has_its_licence() -> None:
    for folder in (STATIC_DIR / "vendor").iterdir():
        if folder.is_dir():
            assert (folder / "LICENSE").is_file(), folder
    total = sum(p.stat().st_size for p in Path(STATIC_DIR).rglob("*") if p.is_file())
    assert total < 3 * 2**20, f"static assets grew to {total / 2**20:.1f} MiB"
