"""The native async jobs API over a real uvicorn, with the in-memory Service."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.api_support import MemService, make_config, serve


@pytest.fixture(scope="module")
def svc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemService, str]]:
    tmp = tmp_path_factory.mktemp("native")
    svc = MemService(tmp / "out", depth=5, job_seconds=0.02)
    with serve(make_config(tmp), svc) as url:
        yield svc, url


@pytest.fixture()
def client(svc_url: tuple[MemService, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc_url[1], timeout=10) as c:
        yield c


def _poll(client: httpx.Client, job_id: str, want: str = "succeeded") -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] == want:
            return body
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {want}")


def test_submit_poll_fetch(client: httpx.Client, svc_url: tuple[MemService, str]) -> None:
    r = client.post("/v1/jobs", json={"prompt": "a cat", "width": 128, "height": 96, "seed": 7, "n": 2,
                                       "steps": 4, "sampler": "dpmpp_2m", "schedule": "karras"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    body = _poll(client, job_id)
    assert body["params"]["seeds"] == [7, 8]
    assert body["params"]["sampler"] == "dpmpp_2m" and body["params"]["schedule"] == "karras"
    assert body["params"]["steps"] == 4
    assert body["images"] == [f"/v1/jobs/{job_id}/images/0", f"/v1/jobs/{job_id}/images/1"]
    img = client.get(body["images"][1])
    assert img.status_code == 200
    assert img.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(img.content)).size == (128, 96)
    assert client.get(f"/v1/jobs/{job_id}/images/2").status_code == 404


def test_profile_defaults_fill_the_rest(client: httpx.Client, svc_url: tuple[MemService, str]) -> None:
    r = client.post("/v1/jobs", json={"prompt": "a dog"})
    assert r.status_code == 202
    body = _poll(client, r.json()["id"])
    # designer profile: 1024x1024, 8 steps, euler, guidance 0
    p = body["params"]
    assert (p["width"], p["height"], p["steps"], p["sampler"], p["guidance"]) == (1024, 1024, 8, "euler", 0.0)


def test_jpeg_output_has_jpeg_content_type(client: httpx.Client) -> None:
    r = client.post("/v1/jobs", json={"prompt": "a cat", "width": 64, "height": 64, "output_format": "jpeg"})
    body = _poll(client, r.json()["id"])
    img = client.get(body["images"][0])
    assert img.headers["content-type"] == "image/jpeg"
    assert img.content[:2] == b"\xff\xd8"


def test_image_404_until_succeeded_and_cancel(client: httpx.Client, svc_url: tuple[MemService, str]) -> None:
    svc = svc_url[0]
    svc.job_seconds = 3.0  # long enough that the checks below run while it is still running
    try:
        first = client.post("/v1/jobs", json={"prompt": "slow", "width": 64, "height": 64}).json()["id"]
        second = client.post("/v1/jobs", json={"prompt": "queued", "width": 64, "height": 64}).json()["id"]
        _poll(client, first, "running")
        early = client.get(f"/v1/jobs/{first}/images/0")
        assert early.status_code == 404
        assert "running" in early.json()["error"]["message"]
        assert client.delete(f"/v1/jobs/{first}").status_code == 409
        cancelled = client.delete(f"/v1/jobs/{second}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert client.get(f"/v1/jobs/{second}").json()["status"] == "cancelled"
        assert client.delete(f"/v1/jobs/{second}").status_code == 409
        assert "cancelled" in client.get(f"/v1/jobs/{second}/images/0").json()["error"]["message"]
    finally:
        svc.job_seconds = 0.02


def test_unknown_job(client: httpx.Client) -> None:
    for method, path in (("GET", "/v1/jobs/nope"), ("DELETE", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/images/0")):
        r = client.request(method, path)
        assert r.status_code == 404
        assert "nope" in r.json()["error"]["message"]
    assert client.get("/v1/jobs/bad%20id!").status_code == 422


@pytest.mark.parametrize(("body", "field", "hint"), [
    ({"prompt": "x", "colour": "red"}, "colour", "unknown field"),
    ({"prompt": "x", "width": 1000}, "width", "multiple of 16"),
    ({"prompt": "x", "height": 4096}, "height", "2048"),
    ({"prompt": "x", "width": 32}, "width", "64"),
    ({"prompt": "x", "steps": 51}, "steps", "1..50"),
    ({"prompt": "x", "steps": 0}, "steps", ">= 1"),
    ({"prompt": "x", "batch": 9}, "batch", "1..8"),
    ({"prompt": "x", "n": 0}, "n", ">= 1"),
    ({"prompt": "x" * 2001}, "prompt", "2000"),
    ({"prompt": "x", "negative_prompt": "y" * 2001}, "negative_prompt", "2000"),
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": "\ud800 cat"}, "prompt", "UTF-8"),
    ({"prompt": "x", "batch": int("9" * 2150)}, "batch", "digits"),
    ({"prompt": "x", "width": 2048, "height": 2048, "steps": 50, "batch": 8}, "cost", "budget of 120 s"),
    ({"prompt": "x", "sampler": "ddim"}, "sampler", "valid"),
    ({"prompt": "x", "schedule": "cosine"}, "schedule", "valid"),
    ({"prompt": "x", "guidance": 99}, "guidance", "<= 20"),
    ({"prompt": "x", "seed": 2**40}, "seed", "out of range"),
    ({"prompt": "x", "seed": -5}, "seed", ">= -1"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "valid"),
    ({"prompt": 5}, "prompt", "string"),
    ({}, "prompt", "required"),
])
def test_limits_give_one_line_4xx_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str, hint: str) -> None:
    # json.dumps escapes a lone surrogate as JSON allows ("\ud800"); httpx's json= would refuse to encode it.
    r = client.post("/v1/jobs", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(field), message
    assert hint in message
    assert "\n" not in message
