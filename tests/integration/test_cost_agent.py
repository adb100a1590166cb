"""The cost check on a host without a GPU estimates with this CPU's measured pace, not the GPU's.

The seed's ecommerce request at 896x896 took 259 s on a CPU against a budget
of 120 s, and the check admitted it: its rate was calibrated on a GPU. Here a
real agent whose only worker runs on the CPU measures its pace from a job's
step events; the fault engine's ``job_seconds`` makes that CPU slow and the
same on any machine (a loaded host only makes it slower).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adversarial"))
from agent_support import Agent  # noqa: E402

pytestmark = pytest.mark.slow

SEED = {"prompt": "a ceramic coffee cup on a wooden table", "width": 896, "height": 896, "steps": 8}
"""The seed's request; the profile's GPU rate (0.1 s per megapixel-step) puts it at 1 s, well within budget."""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    # 20 s per 896x896 job of 2 steps: 10 s a step, about 12 s per megapixel-step.
    a = Agent(tmp_path_factory.mktemp("cost"), tokens=False, job_seconds=20.0,
              sets=["generation.max_job_seconds=60", "queue.job_timeout_s=120"])
    try:
        yield a.wait_ready()
    finally:
        a.stop()


def test_a_cpu_agent_refuses_what_its_own_pace_says_will_not_fit(agent: Agent) -> None:
    first = agent.client.post("/v1/jobs", json={**SEED, "prompt": "a first one", "steps": 2})
    assert first.status_code == 202, first.text
    body = first.json()
    # Nothing measured yet: the 202 says the estimate is the GPU's and that this CPU may be far slower.
    assert "has not measured a job of this size yet" in body["estimate_basis"] and body["estimate_s"] >= 0
    assert agent.wait_job(body["id"], "no-tokens-here")["status"] == "succeeded"

    seed = agent.client.post("/v1/jobs", json=SEED)
    assert seed.status_code == 422, seed.text
    message = seed.json()["error"]["message"]
    assert message.startswith("cost: 896x896 x 8 steps x 1 image is estimated at "), message
    assert "measured on this host's CPU over its last 1 job" in message and "budget of 60 s" in message
    estimated = int(message.split("estimated at ")[1].split(" s")[0])
    assert estimated > 60, message  # 10 s a step x 8 steps: about 80 s

    small = agent.client.post("/v1/jobs", json={"prompt": "fits"})
    assert small.status_code == 202, small.text
    assert small.json()["estimate_basis"].startswith("measured on this host's CPU")
    assert 0 < small.json()["estimate_s"] <= 60
