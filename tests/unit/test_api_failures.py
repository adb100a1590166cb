"""``GET /v1/failures``: the captured-failure store over HTTP, for ``zitops failures --url``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import HTTP, MemService, make_config, serve
from zitops.logbook.failures import FailureStore


class ServiceWithFailures(MemService):
    """A Service that keeps a FailureStore, as the dispatcher does."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp / "out")
        self.failures = FailureStore(tmp / "state", tmp / "logs")


@pytest.fixture(scope="module")
def svc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceWithFailures, str]]:
    tmp = tmp_path_factory.mktemp("failures")
    svc = ServiceWithFailures(tmp)
    for i in range(3):
        svc.failures.record(job_id=f"job{i}", profile="designer", prompt=f"prompt {i}", params={},
                            exc_type="EngineError", message=f"boom {i}", traceback=None, worker_id="w0",
                            vram=None, action="fail")
    with serve(make_config(tmp), svc) as url:
        yield svc, url


def test_failures_newest_first_with_limit(svc_url: tuple[ServiceWithFailures, str]) -> None:
    r = HTTP.get(svc_url[1] + "/v1/failures", params={"limit": 2, "since": "1h"})
    assert r.status_code == 200
    got = r.json()["failures"]
    assert [f["job_id"] for f in got] == ["job2", "job1"]
    assert HTTP.get(svc_url[1] + "/v1/failures", params={"since": "2999-01-01T00:00:00Z"}).json() == {"failures": []}


@pytest.mark.parametrize(("params", "needle"), [
    ({"limit": "0"}, "limit"), ({"limit": "lots"}, "limit"), ({"since": "yesterday-ish"}, "since"),
    ({"since": "x" * 100}, "since"),
])
def test_bad_queries_are_4xx(svc_url: tuple[ServiceWithFailures, str], params: dict[str, str], needle: str) -> None:
    r = HTTP.get(svc_url[1] + "/v1/failures", params=params)
    assert 400 <= r.status_code < 500
    assert needle in r.json()["error"]["message"]


def test_a_service_without_a_store_reads_the_config_paths(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    FailureStore(Path(cfg.paths.state_dir), Path(cfg.paths.log_dir)).record(
        job_id="from-disk", profile="designer", prompt="p", params={}, exc_type="OutOfMemory", message="m",
        traceback=None, worker_id=None, vram=None, action="fail")
    with serve(cfg, MemService(tmp_path / "out")) as url:
        assert [f["job_id"] for f in HTTP.get(url + "/v1/failures").json()["failures"]] == ["from-disk"]
