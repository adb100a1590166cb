"""Tokens file loading, the bind policy, and bearer auth over a real server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_support import HTTP, MemService, make_config, serve  # noqa: E402

from zitops.agent.http.auth import check_bind_policy, load_tokens, token_matches  # noqa: E402
from zitops.errors import ConfigError  # noqa: E402

TOKEN = "s3cret-token-0123456789abcdef"


def _tokens_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "tokens"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_load_tokens_reads_one_per_line_and_skips_comments(tmp_path: Path) -> None:
    p = _tokens_file(tmp_path, f"# ops team\n\n  {TOKEN}  \n# old\nsecond-token-abcdefghij\n")
    cfg = make_config(tmp_path, auth={"tokens_file": str(p)})
    assert load_tokens(cfg) == frozenset({TOKEN, "second-token-abcdefghij"})


def test_no_tokens_file_means_no_tokens(tmp_path: Path) -> None:
    assert load_tokens(make_config(tmp_path)) == frozenset()


@pytest.mark.parametrize(("text", "mode", "needle"), [
    (TOKEN, 0o644, "chmod 600"),
    (TOKEN, 0o602, "chmod 600"),
    ("# nothing here\n\n", 0o600, "holds no tokens"),
    ("short\n", 0o600, "token #1"),
    (f"{TOKEN}\nhas space inside token\n", 0o600, "token #2"),
])
def test_load_tokens_refuses_bad_files(tmp_path: Path, text: str, mode: int, needle: str) -> None:
    p = _tokens_file(tmp_path, text, mode)
    with pytest.raises(ConfigError) as exc:
        load_tokens(make_config(tmp_path, auth={"tokens_file": str(p)}))
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)
    # The error names the file but never echoes a token.
    assert TOKEN not in str(exc.value) and "short" not in str(exc.value).replace("too short", "")


def test_load_tokens_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokens(make_config(tmp_path, auth={"tokens_file": str(tmp_path / "nope")}))


def test_bind_policy(tmp_path: Path) -> None:
    check_bind_policy(make_config(tmp_path), frozenset())
    check_bind_policy(make_config(tmp_path, host="localhost"), frozenset())
    check_bind_policy(make_config(tmp_path, host="0.0.0.0"), frozenset({TOKEN}))
    check_bind_policy(make_config(tmp_path, host="0.0.0.0", auth={"behind_proxy": True}), frozenset())
    with pytest.raises(ConfigError, match="not a loopback address.*auth.tokens_file"):
        check_bind_policy(make_config(tmp_path, host="0.0.0.0"), frozenset())
    with pytest.raises(ConfigError):
        check_bind_policy(make_config(tmp_path, host="10.1.2.3"), frozenset())


def test_token_matches() -> None:
    tokens = frozenset({TOKEN, "other-token-0123456789"})
    assert token_matches(f"Bearer {TOKEN}", tokens)
    assert token_matches(f"bearer   {TOKEN} ", tokens)
    for bad in (None, "", TOKEN, f"Basic {TOKEN}", "Bearer ", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                "Bearer \udcff"):
        assert not token_matches(bad, tokens)


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("auth")
    svc = MemService(tmp / "out")
    with serve(make_config(tmp), svc, frozenset({TOKEN}), admin_tokens=frozenset({TOKEN})) as url:
        yield url


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/status"), ("GET", "/healthz"), ("GET", "/metrics"),
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/no/such/route"), ("GET", "/v1/jobs/abc"),
    ("POST", "/v1/jobs"), ("POST", "/v1/images/generations"), ("POST", "/sdapi/v1/txt2img"),
    ("GET", "/sdapi/v1/samplers"), ("PUT", "/admin/log-levels"),
])
def test_every_route_but_the_probes_needs_a_token(authed: str, method: str, path: str) -> None:
    r = HTTP.request(method, authed + path, json={"prompt": "x"}, timeout=10)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["cache-control"] == "no-store"
    assert "bearer token" in r.json()["error"]["message"]
    wrong = HTTP.request(method, authed + path, headers={"Authorization": "Bearer nope-nope-nope-nope"},
                          json={"prompt": "x"}, timeout=10)
    assert wrong.status_code == 401


def test_probes_are_open_and_a_good_token_works(authed: str) -> None:
    assert HTTP.get(authed + "/livez", timeout=10).status_code == 200
    ready = HTTP.get(authed + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}
    h = {"Authorization": f"Bearer {TOKEN}"}
    status = HTTP.get(authed + "/status", headers=h, timeout=10)
    assert status.status_code == 200
    assert TOKEN not in status.text
    assert status.json()["auth"] == "tokens"
    r = HTTP.post(authed + "/v1/jobs", headers=h, json={"prompt": "a cat", "width": 64, "height": 64}, timeout=10)
    assert r.status_code == 202
    levels = HTTP.put(authed + "/admin/log-levels", headers=h, json={"levels": {"zitops.test": "DEBUG"}}, timeout=10)
    assert levels.status_code == 200
    assert levels.json()["levels"]["zitops.test"] == "DEBUG"


def test_anonymous_probes_get_codes_and_admins_the_reasons(tmp_path: Path) -> None:
    svc = MemService(tmp_path / "out")
    svc.ready = False
    other = "tenant-token-0123456789abcdef"
    with serve(make_config(tmp_path), svc, frozenset({TOKEN, other}), admin_tokens=frozenset({TOKEN})) as url:
        anon = HTTP.get(url + "/readyz", timeout=10)
        assert anon.status_code == 503 and anon.json() == {"ready": False, "reasons": ["no_worker_ready"]}
        tenant = HTTP.get(url + "/readyz", headers={"Authorization": f"Bearer {other}"}, timeout=10).json()
        assert tenant["reasons"] == ["no_worker_ready"]
        admin = HTTP.get(url + "/readyz", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
        assert admin["reasons"] == ["no worker is loaded"]


def test_admin_lines_in_the_tokens_file(tmp_path: Path) -> None:
    from zitops.agent.http.auth import read_client_token, read_tokens

    p = _tokens_file(tmp_path, f"admin:{TOKEN}\nsecond-token-abcdefghij\n")
    tokens = read_tokens(make_config(tmp_path, auth={"tokens_file": str(p)}))
    assert tokens.all == frozenset({TOKEN, "second-token-abcdefghij"}) and tokens.admins == frozenset({TOKEN})
    assert read_client_token(str(p)) == TOKEN  # a client may read the same file


def test_a_store_outage_named_after_the_heartbeat_call_reads_store_unavailable_to_a_probe() -> None:
    # The store's reason names the call that missed its deadline (heartbeat, claim...): a probe without an
    # admin token must still see the store code, not the workers' heartbeat_stale (found by
    # tests/adversarial/test_fleet_asymmetric.py).
    from zitops.agent.http.tenants import reason_codes

    reason = ("store unreachable: job store postgresql://z@10.0.0.1:5432/z: no answer to heartbeat within 3 s")
    assert reason_codes([reason]) == ["store_unavailable"]
    assert reason_codes(["worker 0: no heartbeat for 12.0s"]) == ["heartbeat_stale"]
