"""Defects found by hostile use of the HTTP edge (issue 27), each pinned by a request over a real socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.api_support import HTTP, MemService, free_port, make_config, serve
from zitops.agent.http.hosts import HostPolicy, host_name
from zitops.agent.http.http_server import server_config
from zitops.config import ServerSettings


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("defects")
    with serve(make_config(tmp), MemService(tmp / "out")) as base:
        yield base


def test_405_names_the_allowed_methods(url: str) -> None:
    r = HTTP.request("DELETE", url + "/livez")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"]["message"].endswith("allowed: GET, HEAD")
    r = HTTP.get(url + "/v1/jobs")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def _raw(port: int, host: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split()[1])


@pytest.mark.parametrize("host", ["127.0.0.1:{p}@evil.example", "localhost:{p}/evil", "localhost:1#x",
                                  "127.0.0.1:99999", "127.0.0.1:", "evil.example"])
def test_malformed_host_values_fail_the_host_check(url: str, host: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    assert _raw(port, host.format(p=port)) in (400, 421)
    assert _raw(port, f"127.0.0.1:{port}") == 200 and _raw(port, "[::1]") == 200


def test_host_name_parses_only_well_formed_values() -> None:
    assert host_name("LocalHost.:8080") == "localhost" and host_name("[::1]:7860") == "::1"
    assert host_name("::1") == "::1"
    for bad in ("127.0.0.1:1@evil", "localhost:1/x", "a b", "127.0.0.1:0", "127.0.0.1:65536", ""):
        assert host_name(bad) == "", bad
    # Even "allow anything" does not let a malformed value through.
    assert not HostPolicy.from_settings("127.0.0.1", ["*"]).allows("localhost:1#x")


def _scheme(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{request.url.scheme} {request.client.host if request.client else '-'}")


def _serve_echo(settings: ServerSettings) -> tuple[uvicorn.Server, threading.Thread, str]:
    app = Starlette(routes=[Route("/", _scheme)])
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, settings, 1.0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize(("trusted", "seen"), [([], "http 127.0.0.1"), (["127.0.0.1"], "https 203.0.113.9"),
                                               (["10.0.0.0/8"], "http 127.0.0.1")])
def test_forwarded_headers_are_believed_only_from_configured_proxies(trusted: list[str], seen: str) -> None:
    server, thread, base = _serve_echo(ServerSettings(forwarded_allow_ips=trusted))
    try:
        r = httpx.get(base, headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}, timeout=10)
        assert r.text == seen
    finally:
        server.should_exit = True
        thread.join(10)


def test_forwarded_allow_ips_takes_addresses_only(tmp_path: Path) -> None:
    from zitops.errors import ConfigError

    with pytest.raises(ConfigError, match="forwarded_allow_ips.*not an IP address"):
        make_config(tmp_path, server={"forwarded_allow_ips": ["*"]})


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/v1/jobs", {"prompt": "x", "steps": True}, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": True}, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "seed": False}, "seed"),
    ("/v1/images/generations", {"prompt": "x", "n": True}, "n"),
])
def test_booleans_are_not_integers(url: str, route: str, body: dict[str, object], field: str) -> None:
    r = HTTP.post(url + route, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(f"{field}: ") and "true or false" in r.text


def test_a_4301_digit_integer_is_a_named_422(url: str) -> None:
    r = HTTP.post(url + "/v1/jobs", content=b'{"prompt": "x", "steps": ' + b"9" * 4301 + b"}",
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("steps: a number of 4301 digits") and "9999" not in message


def test_deep_nesting_is_refused_before_any_work(url: str) -> None:
    before = HTTP.get(url + "/status").json()["queue"]
    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    r = HTTP.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "comments": {"a": deep}})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("comments.a.0.0."), r.text
    assert "nested too deeply; at most 32 levels" in r.text
    # Far deeper than the JSON parser's recursion limit: still one line, still 422.
    r = HTTP.post(url + "/v1/jobs", content=b'{"prompt": "x", "c": ' + b"[" * 20000 + b"]" * 20000 + b"}",
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("body: nested too deeply"), r.text
    assert HTTP.get(url + "/status").json()["queue"] == before  # nothing was queued


TENANT, ADMIN = "tenant-token-0123456789abcdef", "admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def tenant_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An agent with tenants, weights at an absolute path and an empty LoRA directory."""
    tmp = tmp_path_factory.mktemp("tenants")
    (tmp / "srv-models" / "Z-Image-Turbo").mkdir(parents=True)
    (tmp / "lora-dir").mkdir()
    config = make_config(tmp, model=str(tmp / "srv-models" / "Z-Image-Turbo"), lora_dir=str(tmp / "lora-dir"))
    with serve(config, MemService(tmp / "out"), tokens=frozenset({TENANT, ADMIN}),
               admin_tokens=frozenset({ADMIN})) as base:
        yield base, tmp


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_sd_models_shows_the_model_path_to_admins_only(tenant_url: tuple[str, Path]) -> None:
    base, tmp = tenant_url
    tenant = HTTP.get(base + "/sdapi/v1/sd-models", headers=_as(TENANT)).json()
    assert tenant[0]["filename"] == "Z-Image-Turbo" and str(tmp) not in str(tenant)
    admin = HTTP.get(base + "/sdapi/v1/sd-models", headers=_as(ADMIN)).json()
    assert admin[0]["filename"] == str(tmp / "srv-models" / "Z-Image-Turbo")


@pytest.mark.parametrize("name", ["../etc/passwd", "nope"])
def test_an_unknown_lora_never_shows_the_lora_directory(tenant_url: tuple[str, Path], name: str) -> None:
    base, tmp = tenant_url
    r = HTTP.post(base + "/v1/jobs", json={"prompt": "x", "loras": [{"name": name}]}, headers=_as(TENANT))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("loras: "), r.text
    assert str(tmp) not in r.text and "lora-dir" not in r.text


def test_cross_site_state_changing_requests_are_refused(url: str) -> None:
    port = url.rsplit(":", 1)[1]
    evil = HTTP.post(url + "/sdapi/v1/interrupt", data={"x": "1"}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "server.allowed_origins" in evil.json()["error"]["message"], evil.text
    fetch = HTTP.post(url + "/v1/jobs", json={"prompt": "x"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch.status_code == 403 and "Sec-Fetch-Site" in fetch.text
    # The agent's own pages (the console), and clients that are not browsers, go on.
    own = HTTP.post(url + "/sdapi/v1/interrupt", headers={"Origin": f"http://127.0.0.1:{port}",
                                                          "Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 200, own.text
    assert HTTP.post(url + "/sdapi/v1/interrupt").status_code == 200
    # Reading is not state-changing.
    assert HTTP.get(url + "/livez", headers={"Origin": "https://evil.example"}).status_code == 200


def test_allowed_origins_let_a_named_site_in(tmp_path: Path) -> None:
    from zitops.agent.http.cross_site import cross_site_refusal
    from zitops.errors import ConfigError

    config = make_config(tmp_path, server={"allowed_origins": ["https://App.Example.com"]})
    allowed = frozenset(config.server.allowed_origins)
    assert allowed == {"https://app.example.com"}
    assert cross_site_refusal("POST", {"origin": "https://app.example.com", "host": "agent:7860"}, allowed) is None
    assert cross_site_refusal("DELETE", {"origin": "https://other.example", "host": "agent:7860"}, allowed)
    assert cross_site_refusal("POST", {"origin": "null", "host": "agent:7860"}, allowed)
    with pytest.raises(ConfigError, match="allowed_origins.*not an origin"):
        make_config(tmp_path, server={"allowed_origins": ["https://app.example.com/path"]})


def _progressive_jpeg(extra_scans: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    scan = data[last:-2]  # the last scan, up to EOI
    return data[:-2] + scan * extra_scans + b"\xff\xd9"


def test_a_jpeg_scan_bomb_is_refused_before_decoding(url: str) -> None:
    import base64

    from zitops.agent.http.image_input import MAX_JPEG_SCANS, jpeg_scans

    normal = _progressive_jpeg()
    assert 1 < jpeg_scans(normal) <= MAX_JPEG_SCANS
    ok = HTTP.post(url + "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [base64.b64encode(normal).decode()],
                                                    "steps": 2})
    assert ok.status_code == 200, ok.text
    bomb = _progressive_jpeg(extra_scans=2000)
    r = HTTP.post(url + "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [base64.b64encode(bomb).decode()],
                                                   "steps": 2})
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("init_images") and f"scans; at most {MAX_JPEG_SCANS} are decoded" in message
