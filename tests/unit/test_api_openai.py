"""The OpenAI Images route, driven by the official ``openai`` client over a real server."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.api_support import HTTP, MemService, make_config, serve
from zitops.agent.contract import JobStatus


@pytest.fixture(scope="module")
def svc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemService, str]]:
    tmp = tmp_path_factory.mktemp("openai")
    svc = MemService(tmp / "out")
    # A profile that batches 2 by default, to show n keeps OpenAI's default of 1.
    with serve(make_config(tmp, sets=["generation.batch=2"]), svc) as url:
        yield svc, url


@pytest.fixture()
def oa(svc_url: tuple[MemService, str]) -> openai.OpenAI:
    # The placeholder key is sent as a bearer token; with no tokens configured it is ignored.
    return openai.OpenAI(base_url=svc_url[1] + "/v1", api_key="sk-placeholder", max_retries=0, timeout=20)


def test_b64_json_with_seed_extra(oa: openai.OpenAI, svc_url: tuple[MemService, str]) -> None:
    res = oa.images.generate(prompt="a red bicycle", n=2, size="256x128", response_format="b64_json",
                             model="z-image-turbo", quality="standard", style="vivid", user="u1",
                             extra_body={"seed": 42})
    assert res.data is not None and len(res.data) == 2
    sizes = [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))).size for d in res.data]
    assert sizes == [(256, 128), (256, 128)]
    assert res.created > 0
    assert res.data[0].revised_prompt == "a red bicycle"
    assert svc_url[0].submitted[-1].seeds == (42, 43)


def test_url_response_points_at_the_native_image(oa: openai.OpenAI, svc_url: tuple[MemService, str]) -> None:
    res = oa.images.generate(prompt="a boat", size="128x128", response_format="url")
    assert res.data is not None
    url = res.data[0].url or ""
    assert url.startswith(svc_url[1] + "/v1/jobs/") and url.endswith("/images/0")
    img = HTTP.get(url, timeout=10)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"


def test_defaults_come_from_the_profile(oa: openai.OpenAI, svc_url: tuple[MemService, str]) -> None:
    # n defaults to OpenAI's 1 even where the profile batches more.
    res = oa.images.generate(prompt="a lamp")
    assert res.data is not None and len(res.data) == 1
    assert res.data[0].b64_json
    req = svc_url[0].submitted[-1]
    assert (req.width, req.height, req.steps, len(req.seeds)) == (1024, 1024, 8, 1)


@pytest.mark.parametrize(("kwargs", "param", "hint"), [
    ({"size": "1000x1000"}, "size", "multiple of 16"),
    ({"size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"size": "4096x4096"}, "size", "2048"),
    ({"n": 20}, "n", "1..8"),
    ({"partial_images": 2}, "partial_images", "need stream"),
    ({"background": "transparent"}, "background", "transparent"),
    ({"output_format": "gif"}, "output_format", "png"),
    ({"extra_body": {"colour": "red"}}, "colour", "unknown field"),
    ({"response_format": "xml"}, "response_format", "b64_json"),
])
def test_errors_use_openais_shape(oa: openai.OpenAI, kwargs: dict[str, Any], param: str, hint: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        oa.images.generate(prompt="x", **kwargs)
    body = exc.value.body
    assert isinstance(body, dict)
    # the client unwraps {"error": {...}} into .body
    assert set(body) >= {"message", "type", "param", "code"}, body
    assert body["param"] == param
    assert hint in body["message"]


def test_queue_full_is_a_rate_limit_with_retry_after(svc_url: tuple[MemService, str]) -> None:
    svc, url = svc_url
    depth = svc.depth
    svc.depth = 0
    try:
        r = HTTP.post(url + "/v1/images/generations", json={"prompt": "x"}, timeout=10)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        svc.depth = depth


def test_failed_job_is_reported(oa: openai.OpenAI, svc_url: tuple[MemService, str]) -> None:
    svc_url[0].fail_next = "EngineError: the engine fell over"
    with pytest.raises(openai.InternalServerError) as exc:
        oa.images.generate(prompt="x", size="64x64")
    assert "fell over" in str(exc.value)


def test_a_client_that_hangs_up_gets_its_queued_job_cancelled(svc_url: tuple[MemService, str]) -> None:
    svc, url = svc_url
    svc.paused = True  # nothing runs, so the job is still queued when the client gives up
    try:
        with pytest.raises(httpx.ReadTimeout):
            HTTP.post(url + "/v1/images/generations", json={"prompt": "impatient", "size": "64x64"}, timeout=0.4)
        job = next(r for r in svc.jobs.values() if r.request.prompt == "impatient")
        deadline = time.monotonic() + 5
        while svc.get(job.id).status is JobStatus.QUEUED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.get(job.id).status is JobStatus.CANCELLED
    finally:
        svc.paused = False
