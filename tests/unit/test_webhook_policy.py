"""The webhook rules: the SSRF guard, the pinned address, the signature (checked by ``standardwebhooks``),
the backoff, and the config entries that allow plain http."""

from __future__ import annotations

import base64

import pytest
import standardwebhooks

from zitops.agent.dispatch.webhook_policy import (
    backoff_s,
    check_target,
    event_body,
    parse_secret,
    pinned_address,
    sign,
)
from zitops.errors import ConfigError, InvalidRequest
from zitops.results_settings import WebhookSettings

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://evil.example.net/x", ["hooks.example.com"]),
    ("https://example.com.evil.net/x", ["*.example.com"]),
    ("http://hooks.example.com/x", ["hooks.example.com"]),  # http needs an origin entry
    ("http://127.0.0.1:9001/x", ["http://127.0.0.1:9000"]),  # another port
    ("https://user:pw@hooks.example.com/x", ["hooks.example.com"]),
    ("file:///etc/passwd", ["hooks.example.com"]),
    ("https://hooks.example.com/x#frag", ["hooks.example.com"]),
    ("https://hooks.example.com:99999/x", ["hooks.example.com"]),
])
def test_targets_outside_the_list_are_refused_naming_the_field(url: str, allowed: list[str]) -> None:
    with pytest.raises(InvalidRequest, match=r"^webhook: "):
        check_target(url, allowed)


def test_the_refusal_names_the_setting() -> None:
    with pytest.raises(InvalidRequest, match=r"webhooks\.allowed_hosts"):
        check_target("https://evil.example.net/", ["hooks.example.com"])


def test_listed_targets_pass() -> None:
    assert check_target("https://a.example.com/h?x=1", ["*.example.com"]).path == "/h?x=1"
    target = check_target("http://127.0.0.1:9000/h", ["http://127.0.0.1:9000"])
    assert (target.scheme, target.host, target.port, target.literal) == ("http", "127.0.0.1", 9000, True)


def test_a_listed_name_that_resolves_inside_is_refused_and_an_address_is_pinned() -> None:
    named = check_target("https://hooks.example.com/", ["hooks.example.com"])
    for inside in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1"):
        with pytest.raises(InvalidRequest, match="not a public address"):
            pinned_address(named, ["93.184.216.34", inside])
    assert pinned_address(named, ["93.184.216.34"]) == "93.184.216.34"
    literal = check_target("https://10.0.0.5/", ["10.0.0.5"])
    assert pinned_address(literal, []) == "10.0.0.5"  # the operator listed the address itself


def test_the_signature_verifies_with_standardwebhooks() -> None:
    body = event_body({"id": "j1", "status": "succeeded", "error": None, "finished_at": 1_700_000_000.0},
                      ["/v1/jobs/j1/images/0"])
    import time

    stamp = int(time.time())
    headers = {"webhook-id": "msg_j1", "webhook-timestamp": str(stamp),
               "webhook-signature": sign(parse_secret(SECRET), "msg_j1", stamp, body)}
    assert standardwebhooks.Webhook(SECRET).verify(body, headers)["data"]["id"] == "j1"
    headers["webhook-id"] = "msg_j2"  # the id is signed too
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, headers)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    assert [backoff_s(n, 1.0, 10.0, 1.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff_s(3, 1.0, 10.0, 0.0) == 2.0  # jitter takes off at most half


@pytest.mark.parametrize("text", ["", "abc", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_bad_secrets_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(ConfigError, match="webhooks.secret_file") as err:
        parse_secret(text)
    assert text.removeprefix("whsec_") not in str(err.value) or not text.removeprefix("whsec_")


def test_allowed_hosts_entries_are_checked() -> None:
    ok = WebhookSettings(allowed_hosts=["Hooks.Example.com", "*.example.org", "http://127.0.0.1:8080"])
    assert ok.allowed_hosts == ["hooks.example.com", "*.example.org", "http://127.0.0.1:8080"]
    for bad in ("*", "http://127.0.0.1", "http://127.0.0.1:80/path", "https://x", "a b"):
        with pytest.raises(ValueError):
            WebhookSettings(allowed_hosts=[bad])
