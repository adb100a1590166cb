"""The edge: headers on every response, request ids, body limit, errors, ops endpoints, fuzzing."""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog.testing

from tests.api_support import HTTP, MemService, make_config, serve


class BrokenStatus(MemService):
    """A Service whose /status blows up, to prove the last-resort 500."""

    def status(self) -> dict[str, Any]:
        """Always fails."""
        raise RuntimeError("kaboom secret-internal-detail")


@pytest.fixture(scope="module")
def svc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemService, str]]:
    tmp = tmp_path_factory.mktemp("edge")
    svc = BrokenStatus(tmp / "out", depth=3)
    with serve(make_config(tmp, limits={"max_body_bytes": 4096, "max_image_body_bytes": 16384}), svc) as url:
        yield svc, url


def _secure(r: httpx.Response) -> None:
    assert r.headers.get("cache-control") == "no-store", (r.request.url, r.status_code)
    assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.status_code)
    assert r.headers.get("x-request-id")


def test_headers_on_every_kind_of_response(svc_url: tuple[MemService, str]) -> None:
    url = svc_url[1]
    job = HTTP.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64}, timeout=10).json()["id"]
    deadline = time.monotonic() + 10
    while HTTP.get(f"{url}/v1/jobs/{job}", timeout=10).json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    responses = [
        HTTP.get(url + "/livez"), HTTP.get(url + "/readyz"), HTTP.get(url + "/healthz"),
        HTTP.get(url + "/metrics"), HTTP.get(url + "/openapi.json"), HTTP.get(url + "/docs"),
        HTTP.get(url + "/nope"), HTTP.delete(url + "/livez"),
        HTTP.post(url + "/v1/jobs", content=b"{", headers={"content-type": "application/json"}),
        HTTP.post(url + "/v1/images/generations", content=b"x" * 5000),
        HTTP.get(f"{url}/v1/jobs/{job}"), HTTP.get(f"{url}/v1/jobs/{job}/images/0"),
    ]
    statuses = {r.status_code for r in responses}
    assert {200, 404, 405, 413, 422} <= statuses  # the 500 is checked in its own test
    for r in responses:
        _secure(r)


def test_request_id_is_honoured_or_generated(svc_url: tuple[MemService, str]) -> None:
    url = svc_url[1]
    assert HTTP.get(url + "/livez", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    bad = HTTP.get(url + "/livez", headers={"X-Request-ID": "evil\x7fvalue with spaces"}).headers["x-request-id"]
    assert bad != "evil" and len(bad) == 32
    a, b = (HTTP.get(url + "/livez").headers["x-request-id"] for _ in range(2))
    assert a != b


def test_body_limit_applies_to_declared_and_chunked_bodies(svc_url: tuple[MemService, str]) -> None:
    url = svc_url[1]
    big = json.dumps({"prompt": "x" * 5000}).encode()
    r = HTTP.post(url + "/v1/images/generations", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "4096" in r.json()["error"]["message"]
    # Native jobs carry their images in the JSON (init_image, mask, a control image): the image limit.
    r = HTTP.post(url + "/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert r.status_code != 413, r.text
    huge = json.dumps({"prompt": "a", "init_image": "x" * 20000}).encode()
    r = HTTP.post(url + "/v1/jobs", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limits.max_image_body_bytes" in r.json()["error"]["message"], r.text

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = HTTP.post(url + "/v1/images/generations", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    # Small chunked bodies still work.
    r = HTTP.post(url + "/v1/jobs", content=iter([b'{"prompt": "a", ', b'"width": 64, "height": 64}']),
                   headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text


def test_unexpected_errors_are_a_logged_500_without_details(svc_url: tuple[MemService, str]) -> None:
    with structlog.testing.capture_logs() as logs:
        r = HTTP.get(svc_url[1] + "/status", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500
    _secure(r)
    assert "req-500" in r.json()["error"]["message"]
    assert "kaboom" not in r.text
    logged = [e for e in logs if e.get("path") == "/status" and e["log_level"] == "error"]
    assert logged and logged[0].get("exc_info"), logs


def test_queue_full_and_draining_carry_retry_after(svc_url: tuple[MemService, str]) -> None:
    svc, url = svc_url
    svc.paused = True
    try:
        codes = [HTTP.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64}).status_code
                 for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        full = HTTP.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64})
        assert full.status_code == 429 and full.headers["retry-after"] == "3"
        assert full.json()["error"]["code"] == "queue_full"
        # The paused service cannot drain its queue: livez answering at all shows it waits on no job.
        live = HTTP.get(url + "/livez")
        assert live.status_code == 200
        ready = HTTP.get(url + "/readyz")
        assert ready.status_code == 503 and any("queue is full" in x for x in ready.json()["reasons"])
        assert HTTP.get(url + "/healthz").status_code == 503
        svc.draining = True
        svc.depth = 100
        drain = HTTP.post(url + "/v1/jobs", json={"prompt": "x"})
        assert drain.status_code == 503 and drain.headers["retry-after"]
    finally:
        svc.draining = False
        svc.depth = 3
        svc.paused = False


def test_metrics_concatenate_http_and_runtime(svc_url: tuple[MemService, str]) -> None:
    url = svc_url[1]
    HTTP.get(url + "/livez")
    text = HTTP.get(url + "/metrics").text
    assert 'zitops_http_requests_total{method="GET",route="/livez",status="200"}' in text
    assert "zitops_http_request_duration_seconds_bucket" in text
    assert "zitops_queue_depth" in text
    # Route templates, never raw paths with ids.
    assert 'route="/v1/jobs/{job_id}"' in text
    # Without tokens the Host check still guards /metrics (only a token lets a pod-IP scrape through).
    assert HTTP.get(url + "/metrics", headers={"Host": "10.42.0.17:7860"}).status_code == 421


def test_log_levels(svc_url: tuple[MemService, str]) -> None:
    url = svc_url[1]
    r = HTTP.put(url + "/admin/log-levels", json={"levels": {"zitops.edge": "warning"}})
    assert r.status_code == 200 and r.json()["levels"]["zitops.edge"] == "WARNING"
    bad = HTTP.put(url + "/admin/log-levels", json={"levels": {"zitops": "LOUD"}})
    assert bad.status_code == 422 and "LOUD" in bad.json()["error"]["message"]
    assert HTTP.put(url + "/admin/log-levels", json={"levels": {}}).status_code == 422


def test_openapi_lists_the_routes(svc_url: tuple[MemService, str]) -> None:
    spec = HTTP.get(svc_url[1] + "/openapi.json").json()
    paths = spec["paths"]
    # Error responses are documented in the shape they really have, not FastAPI's default.
    assert "HTTPValidationError" not in json.dumps(spec)
    assert paths["/v1/jobs"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    for p in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{index}", "/v1/images/generations",
              "/sdapi/v1/txt2img", "/sdapi/v1/samplers", "/livez", "/readyz", "/healthz", "/status", "/metrics"):
        assert p in paths


def _junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**30, 2**64 + 1])
    if kind == 2:
        return rng.choice([0.5, -1e308, 1e308, 16.0001])
    if kind == 3:
        return rng.choice(["", "é猫\u202e", "\x00", "a" * 300, "1024x1024", "DPM++ 2M SDE", "\ud83d\ude00"])
    if kind in (4, 5):
        return rng.choice(["png", "url", "Euler", 1024, 64, 8, 7.0])
    if kind == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["prompt", "width", "n", "seed", "x", "enable_hr", "size"]): _junk(rng, depth + 1)
            for _ in range(rng.randrange(4))}


FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "sampler", "schedule", "guidance", "seed",
          "batch", "n", "size", "response_format", "sampler_name", "scheduler", "cfg_scale", "batch_size",
          "n_iter", "enable_hr", "alwayson_scripts", "override_settings", "send_images", "stream", "output_format"]


def test_fuzz_nothing_a_client_sends_causes_a_5xx(svc_url: tuple[MemService, str]) -> None:
    url = svc_url[1]
    rng = random.Random(1234)
    raw_bodies = [b"", b"null", b"[]", b"42", b'"str"', b"{", b"\xff\xfe", b"[" * 3000 + b"]" * 3000,
                  b'{"prompt": NaN}', b'{"prompt": "x", "guidance": Infinity, "width": 64, "height": 64}',
                  b'{"prompt": "x", "prompt": 3}', b'{"prompt": {"$gt": ""}}', "{\"prompt\": \"猫\"}".encode()]
    bodies: list[bytes] = list(raw_bodies)
    for _ in range(150):
        fields = {f: _junk(rng) for f in rng.sample(FIELDS, rng.randrange(1, 6))}
        if rng.random() < 0.7:
            fields["prompt"] = rng.choice(["a cat", "", "猫" * 10, 5])
        bodies.append(json.dumps(fields).encode())
    routes = ["/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img", "/admin/log-levels"]
    seen: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=20) as c:
        for i, body in enumerate(bodies):
            route = routes[i % len(routes)]
            method = "PUT" if route == "/admin/log-levels" else "POST"
            ctype = rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"])
            r = c.request(method, route, content=body, headers={"content-type": ctype})
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (route, body[:200], r.status_code, r.text[:300])
            if r.status_code >= 400:
                assert "\n" not in r.json()["error"]["message"]
        for path in ["/v1/jobs/" + "a" * 5000, "/v1/jobs/%00", "/v1/jobs/x/images/-1", "/v1/jobs/x/images/99999999999999999999",
                     "/sdapi/v1/../../etc/passwd", "/v1/jobs/..%2f..%2fetc"]:
            r = c.get(path)
            assert r.status_code < 500, (path, r.status_code)
    assert seen.get(422, 0) > 50


def test_raw_socket_garbage_does_not_kill_the_server(svc_url: tuple[MemService, str]) -> None:
    host, port = svc_url[1].removeprefix("http://").split(":")
    for payload in (b"GARBAGE\r\n\r\n", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
                    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            data = s.recv(4096)
            assert not data.startswith(b"HTTP/1.1 5"), data[:100]
    assert HTTP.get(svc_url[1] + "/livez").status_code == 200


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img"])
def test_non_finite_numbers_never_5xx(svc_url: tuple[MemService, str], route: str) -> None:
    # Python's json accepts NaN and Infinity; none of them may reach a 500 (or an invalid JSON response).
    fields = ["hr_scale", "cfg_scale", "guidance", "refiner_switch_at", "eta", "seed", "steps", "n", "width"]
    with httpx.Client(base_url=svc_url[1], timeout=20) as c:
        for field in fields:
            for value in ("NaN", "Infinity", "-Infinity"):
                body = f'{{"prompt": "x", "{field}": {value}, "comments": {{"a": {value}}}}}'.encode()
                r = c.post(route, content=body, headers={"content-type": "application/json"})
                assert r.status_code < 500, (route, field, value, r.text[:200])
                r.json()  # the response itself is valid JSON
