"""``Idempotency-Key`` on submit, through real agents: one job per key, in SQLite and in a PostgreSQL fleet.

Each test failed before the header was read (a retry made a second job).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image

from tests.fleet_support import FleetAgent
from tests.store_support import poll_until

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

pytest_plugins = ["tests.pg_support"]  # the pg_cluster and pg_db fixtures
pytestmark = pytest.mark.slow

BODY = {"prompt": "a fox", "seed": 1}


def post(agent: FleetAgent, key: str | None, body: dict[str, Any] | str = BODY, route: str = "/v1/jobs") -> httpx.Response:
    """POST ``body`` (a dict, or the exact JSON text) with the key, if any."""
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key is not None else {})}
    content = body if isinstance(body, str) else json.dumps(body)
    return agent.client.post(route, content=content, headers=headers)


def a1111_job(r: httpx.Response) -> str:
    """The zitops job id an A1111 answer names."""
    assert r.status_code == 200, r.text
    job: str = json.loads(r.json()["info"])["extra_generation_params"]["zitops job"]
    return job


def test_a_retry_with_the_same_key_gets_the_same_job_sqlite(tmp_path: Path) -> None:
    a = FleetAgent(tmp_path / "a", None, tokens=True)
    try:
        a.wait_ready()
        first = post(a, "order-17")
        assert first.status_code == 202, first.text
        job = first.json()["id"]
        again = post(a, "order-17", '{ "seed": 1,   "prompt": "a fox" }')  # the same JSON, sent anew
        assert (again.status_code, again.json()["id"], again.headers["Location"]) == (202, job, f"/v1/jobs/{job}")
        assert post(a, None).json()["id"] != job  # no key: a new job each time
        other = post(a, "order-17", {"prompt": "a fox", "seed": 2})
        assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]["message"], other.text
        bad = post(a, "x" * 256)
        assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["error"]["message"], bad.text
        poll_until(lambda: a.job(job)["status"] == "succeeded", 30)
        assert post(a, "order-17").json()["id"] == job  # also once it is done

        # The synchronous routes: a retry answers with the same job's result (its files are kept).
        sync = {"prompt": "a hen", "seed": 3, "steps": 2, "width": 64, "height": 64}
        first_sync = a1111_job(post(a, "render-1", sync, "/sdapi/v1/txt2img"))
        assert a1111_job(post(a, "render-1", sync, "/sdapi/v1/txt2img")) == first_sync
        # A multipart route (OpenAI edits): its form is compared field by field.
        png = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(png, "PNG")

        def edit(prompt: str) -> httpx.Response:
            return a.client.post("/v1/images/edits", headers={"Idempotency-Key": "edit-1"},
                                 files={"image": ("in.png", png.getvalue(), "image/png")},
                                 data={"prompt": prompt, "response_format": "url"})

        urls = [edit("a red fox").json()["data"][0]["url"] for _ in range(2)]
        assert urls[0] == urls[1], urls
        assert edit("a blue fox").status_code == 422
    finally:
        a.stop()


def test_one_job_per_key_across_a_fleet(tmp_path: Path, pg_db: PgDatabase) -> None:
    a = FleetAgent(tmp_path / "a", pg_db, tokens=True)
    b = FleetAgent(tmp_path / "b", pg_db, tokens=True)
    try:
        a.wait_ready()
        b.wait_ready()
        job = post(a, '"f81d4fae-7dec-11d0-a765-00a0c91e6bf6"').json()["id"]  # the draft's quoted form
        again = post(b, "f81d4fae-7dec-11d0-a765-00a0c91e6bf6")  # the retry reached the other agent
        assert (again.status_code, again.json()["id"]) == (202, job), again.text
        other = post(b, "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", {"prompt": "a cat"})
        assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]["message"], other.text
        with pg_db.connect() as conn:
            row = conn.execute("SELECT count(*) FROM zitops.jobs").fetchone()
        assert row is not None and row[0] == 1
        poll_until(lambda: a.job(job)["status"] == "succeeded", 30)
        sync = {"prompt": "a hen", "seed": 3, "steps": 2, "width": 64, "height": 64}
        assert a1111_job(post(a, "render-1", sync, "/sdapi/v1/txt2img")) == \
            a1111_job(post(b, "render-1", sync, "/sdapi/v1/txt2img"))
    finally:
        a.stop()
        b.stop()
