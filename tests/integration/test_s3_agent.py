"""Images in S3-compatible object storage: the real agent against a real SeaweedFS on 127.0.0.1.

boto3 reads the objects the agent wrote; the openai client's ``url`` answer
and the native job's links are presigned URLs that plain HTTP follows. The
outage test kills SeaweedFS under an agent running the fault engine (a job
of a known length), then starts it again on the same ports: the finished
job's images wait on the host, the agent refuses new work with the reason,
and when the store is back the job succeeds, with no agent restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from tests.agent_process_support import AgentProcess
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model, wait_until
from zitops.profile import load_profile

if TYPE_CHECKING:
    from tests.s3_support import Weed

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.s3_support"]  # the weed fixture

SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.drain_timeout_s=10"]
BUCKET = "zitops-images"


def agent_data(tmp: Path, weed: Weed, prefix: str, faults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The real tiny pipeline (or the fault engine), images in s3://BUCKET/prefix on ``weed``."""
    if faults is None:
        link_tiny_model(tmp / "state_dir")
    engine = {"kind": "diffusers"} if faults is None else {"kind": "faulty", "faults": {"inner": "synthetic", **faults}}
    return {
        "profile": load_profile("designer", SETS + (REAL_ENGINE_SETS if faults is None else [])).model_dump(mode="json"),
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": engine, "log_format": "json",
        "images": {"url": f"s3://{BUCKET}/{prefix}", "s3_endpoint": weed.endpoint, "url_ttl_s": 600,
                   "s3_credentials_file": str(weed.credentials_file(tmp / "s3-credentials")),
                   "check_interval_s": 0.5},
    }


@pytest.fixture(scope="module")
def agent(weed: Weed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("s3-agent")
    proc = AgentProcess(tmp, agent_data(tmp, weed, "runs/a"))
    proc.wait_ready()
    yield proc
    proc.stop()


def finished(agent: AgentProcess, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    job: dict[str, Any] = wait_until(
        lambda: (j := httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json())["status"] in
        ("succeeded", "failed", "cancelled") and j, timeout_s, what=f"job {job_id} to end")
    return job


def test_a_job_succeeds_as_objects_under_its_prefix_and_its_links_are_presigned(agent: AgentProcess,
                                                                                weed: Weed) -> None:
    job_id = httpx.post(agent.url + "/v1/jobs", json={"prompt": "a red fox"}, timeout=30).json()["id"]
    job = finished(agent, job_id)
    assert job["status"] == "succeeded", job
    s3 = weed.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/a/{job_id}/")["Contents"]]
    assert len(keys) == 1 and keys[0].endswith(".png")
    stored = s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
    assert stored[:8] == b"\x89PNG\r\n\x1a\n"
    served = httpx.get(f"{agent.url}/v1/jobs/{job_id}/images/0", timeout=10)
    assert served.status_code == 200 and served.content == stored  # the API still serves the bytes
    (link,) = job["images"]
    assert link.startswith(weed.endpoint) and parse_qs(urlsplit(link).query)["X-Amz-Expires"] == ["600"]
    assert httpx.get(link, timeout=10).content == stored


def test_the_openai_url_answer_is_a_presigned_object(agent: AgentProcess, weed: Weed) -> None:
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key="unused", timeout=120)
    answer = client.images.generate(prompt="a blue bird", response_format="url", size="64x64")
    assert answer.data is not None
    url = answer.data[0].url
    assert url is not None and url.startswith(weed.endpoint + f"/{BUCKET}/runs/a/")
    got = httpx.get(url, timeout=10)
    assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert got.headers["content-type"] == "image/png"


def test_an_outage_holds_images_refuses_work_and_heals_without_a_restart(weed: Weed, tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, agent_data(tmp_path, weed, "outage", faults={"job_seconds": 4.0}))
    try:
        agent.wait_ready()
        pid = agent.proc.pid
        job_id = httpx.post(agent.url + "/v1/jobs", json={"prompt": "held"}, timeout=30).json()["id"]
        wait_until(lambda: httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "running",
                   60, what="the job to start")
        weed.stop()  # the job is on its worker; it ends while the store is down
        ready = wait_until(lambda: (r := httpx.get(agent.url + "/readyz", timeout=10)).status_code != 200 and r,
                           60, what="/readyz to say the object store is down")
        assert "object_store_down" in ready.text
        refused = httpx.post(agent.url + "/v1/jobs", json={"prompt": "refused"}, timeout=30)
        assert refused.status_code == 503 and "object store" in refused.json()["error"]["message"]
        wait_until(lambda: "images kept on this host" in (tmp_path / "agent.out").read_text("utf-8", "replace"),
                   60, what="the finished job's images to be held")
        assert httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "running"
        assert list((tmp_path / "output_dir").glob(f"{job_id}*"))  # kept on the host
        weed.start()
        job = finished(agent, job_id, 90)
        assert job["status"] == "succeeded", job
        keys = [o["Key"] for o in weed.client().list_objects_v2(Bucket=BUCKET, Prefix=f"outage/{job_id}/")["Contents"]]
        assert len(keys) == 1
        wait_until(lambda: httpx.get(agent.url + "/readyz", timeout=10).status_code == 200, 60, what="ready again")
        assert httpx.post(agent.url + "/v1/jobs", json={"prompt": "after"}, timeout=30).status_code == 202
        assert agent.proc.pid == pid and agent.proc.poll() is None
        state = httpx.get(agent.url + "/status", timeout=10).json()["object_store"]
        assert state["configured"] and state["up"]
    finally:
        agent.stop()
        if weed.proc is None:
            weed.start()


def readyz(agent: AgentProcess) -> str:
    """/readyz's answer, or "" while the agent does not listen yet."""
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(agent.url + "/readyz", timeout=10).text
    return ""


def test_a_restart_during_an_outage_uploads_the_held_images_without_running_the_job_again(
        weed: Weed, tmp_path: Path) -> None:
    data = agent_data(tmp_path, weed, "restart", faults={"job_seconds": 3.0})
    agent = AgentProcess(tmp_path, data)
    try:
        agent.wait_ready()
        job_id = httpx.post(agent.url + "/v1/jobs", json={"prompt": "held over a restart"}, timeout=30).json()["id"]
        wait_until(lambda: httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "running",
                   60, what="the job to start")
        weed.stop()
        wait_until(lambda: "images kept on this host" in (tmp_path / "agent.out").read_text("utf-8", "replace"),
                   60, what="the finished job's images to be held")
        held = {p.name: p.read_bytes() for p in (tmp_path / "output_dir").glob(f"{job_id}*")}
        assert len(held) == 1
        agent.stop()  # the store is still down: the job is finished, its images only on this host
        agent = AgentProcess(tmp_path, data)
        wait_until(lambda: "object_store_down" in readyz(agent), 120,
                   what="the restarted agent to answer, the object store still down")
        assert httpx.get(f"{agent.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "running"
        weed.start()
        job = finished(agent, job_id, 90)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        (key,) = [o["Key"] for o in weed.client().list_objects_v2(Bucket=BUCKET, Prefix=f"restart/{job_id}/")["Contents"]]
        assert {key.rsplit("/", 1)[-1]: weed.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()} == held
        log = (tmp_path / "log_dir" / "zitops.log").read_text("utf-8", "replace").splitlines()
        started = [line for line in log if '"job started"' in line and job_id in line]
        assert len(started) == 1, started  # ran once, before the restart
    finally:
        agent.stop()
        if weed.proc is None:
            weed.start()


def test_objects_are_keyed_by_attempt_so_a_stale_run_never_replaces_the_winners(weed: Weed,
                                                                                 tmp_path: Path) -> None:
    """A run whose lease moved on writes under its own attempt; readers take the succeeded record's attempt;
    retention removes every attempt's objects under the job's prefix."""
    from zitops.agent.dispatch.object_store import ObjectStore
    from zitops.results_settings import ImageSettings

    store = ObjectStore(ImageSettings(url=f"s3://{BUCKET}/fence", s3_endpoint=weed.endpoint,
                                      s3_credentials_file=str(weed.credentials_file(tmp_path / "creds"))))
    store.put("job1", 2, ("job1-0.png",), (b"WINNER",))  # attempt 2 won and succeeded
    store.put("job1", 1, ("job1-0.png",), (b"STALE-A",))  # attempt 1's late write, after the reap
    assert store.get("job1", 2, "job1-0.png") == b"WINNER"
    assert httpx.get(store.presign("job1", 2, "job1-0.png"), timeout=10).content == b"WINNER"
    store.delete_job("job1")
    assert "Contents" not in weed.client().list_objects_v2(Bucket=BUCKET, Prefix="fence/job1/")
