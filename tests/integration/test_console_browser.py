"""The console in a real headless Chromium against real agents on 127.0.0.1.

One ``zitops agent`` process (the fault engine around the tiny pipeline, so
VRAM numbers exist on a CPU host) serves the page, the chart and the form; a
token-protected app on a real uvicorn checks the token prompt. Every wait is
on the page (selectors, functions), never a sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import MemService, make_config, serve
from tests.console_support import Outside, browser, real_agent
from tests.engine_support import tiny_model_dir

pytestmark = pytest.mark.slow

HOSTILE = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
TOKEN = "console-test-token-0123456789"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The first job fails on purpose, so the failures table has a prompt to escape.
    with real_agent(tmp_path_factory.mktemp("console"), tiny_model_dir(), raise_on_job=1) as url:
        yield url


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as context:
        yield context


@pytest.fixture()
def page(chromium: Any) -> Iterator[Any]:
    p = chromium.new_page()
    p.set_default_timeout(WAIT_MS)
    yield p
    p.close()


def test_page_loads_offline_shows_w0_profile_and_draws_the_chart(agent_url: str, page: Any) -> None:
    outside = Outside(agent_url)
    outside.attach(page)
    page.goto(agent_url + "/")
    row = page.wait_for_selector('#worker-rows tr[data-worker="w0"]')
    assert row.inner_text().startswith("w0")
    assert page.inner_text('dd[data-field="profile"]') == "designer"
    # The webhook deliveries card and the object store's line (both off on this agent).
    assert "webhooks.secret_file is not set" in page.inner_text("#webhook-counts")
    assert page.inner_text('dd[data-field="object store"]').startswith("none")
    # The chart: a uPlot per device, drawn once samples have arrived.
    page.wait_for_selector('.chart:not([data-samples="0"]) canvas')
    canvas = page.query_selector(".chart canvas")
    box = canvas.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 50
    labels = [s.inner_text() for s in page.query_selector_all(".chart .u-legend .u-series th")]
    assert any("torch allocated" in t for t in labels) and any("torch reserved" in t for t in labels)
    assert any("used" in t for t in labels)
    inked = page.evaluate("""() => {
        const c = document.querySelector('.chart canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n; }""")
    assert inked > 0, "the chart's canvas is blank"
    # "VRAM, last hour": the time axis spans the last hour, not years around a few samples.
    span = int(page.get_attribute(".chart", "data-x-span-s") or 0)
    assert 3590 <= span <= 3610, span
    assert outside.seen and not outside.left, f"requests left the agent: {outside.left}"
    assert any(u.endswith("/v1/vram/history") for u in outside.seen)


def test_generate_renders_an_image_and_escapes_api_text(agent_url: str, page: Any) -> None:
    outside = Outside(agent_url)
    outside.attach(page)
    page.goto(agent_url + "/")
    page.wait_for_selector('select[name="sampler"] option[value="euler"]', state="attached")
    form = page.locator("#generate-form")
    form.locator('textarea[name="prompt"]').fill(HOSTILE)
    form.locator('input[name="width"]').fill("64")
    form.locator('input[name="height"]').fill("64")
    form.locator('input[name="steps"]').fill("2")
    form.locator('input[name="seed"]').fill("7")
    form.locator('select[name="sampler"]').select_option("euler")
    page.get_by_role("button", name="Generate").click()
    # Job 1 fails by design: its error is shown as text, its prompt lands in the failures table.
    page.wait_for_function("() => document.querySelector('#job-error').textContent.includes('injected failure')")
    page.wait_for_selector("#failure-rows td[title]")
    assert HOSTILE[:40] in page.inner_text("#failure-rows")  # the failure log keeps a prefix
    assert page.query_selector("#failure-rows img, #failure-rows script") is None
    form.locator('textarea[name="prompt"]').fill("a lighthouse at dusk")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.querySelector('#job-image').naturalWidth > 0")
    assert page.evaluate("() => document.querySelector('#job-image').naturalWidth") == 64
    assert "seed 7" in page.inner_text("#job-caption")
    assert page.evaluate("() => window.__pwned") is None
    assert not outside.left, f"requests left the agent: {outside.left}"


def test_docs_and_redoc_render_from_vendored_assets(agent_url: str, page: Any) -> None:
    outside = Outside(agent_url)
    outside.attach(page)
    page.goto(agent_url + "/docs")
    page.wait_for_selector('.swagger-ui .opblock-summary-path[data-path="/v1/jobs"]')
    page.goto(agent_url + "/redoc")
    page.wait_for_selector("redoc h1, [role=menuitem]")
    assert "zitops agent" in page.inner_text("body")
    assert not outside.left, f"requests left the agent: {outside.left}"


def test_token_protected_agent_asks_for_the_token(tmp_path: Path, page: Any) -> None:
    svc = MemService(tmp_path / "out")
    with serve(make_config(tmp_path), svc, frozenset({TOKEN})) as url:
        outside = Outside(url)
        outside.attach(page)
        page.goto(url + "/")
        page.wait_for_selector("#token", state="visible")
        assert page.is_hidden("#main")
        page.fill("#token", "wrong-token-wrong-token")
        page.get_by_role("button", name="Use token").click()
        page.wait_for_function("() => document.querySelector('#auth-error').textContent.includes('refused')")
        page.fill("#token", TOKEN)
        page.get_by_role("button", name="Use token").click()
        row = page.wait_for_selector('#worker-rows tr[data-worker="w0"]')
        assert row.inner_text().startswith("w0")
        assert page.is_hidden("#auth")
        assert page.evaluate("() => sessionStorage.getItem('zitops.token')") == TOKEN
        assert not outside.left, f"requests left the agent: {outside.left}"

