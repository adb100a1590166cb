"""The published OpenAPI tells the truth: schemathesis, every check, against a real agent.

Positive and negative examples (bounded) for every operation of the agent's
own ``/openapi.json``, through schemathesis' pytest API. The agent has small
limits so every schema-valid job is cheap, and a cost budget that covers the
largest one the schema allows: the budget is not expressible in JSON Schema
(it is a documented 422), the rest is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_support import Agent  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE_INPUT = frozenset({"POST /sdapi/v1/img2img", "POST /v1/images/edits", "POST /v1/jobs"})
"""Operations whose body carries (or, for native jobs, may carry) an image: a schema can say "base64 PNG,
JPEG or WebP" but not generate one, so their random positive examples are junk the API rightly refuses
with a 422 naming the field.
Every other check still runs on them; tests/integration/test_features_agent.py sends real images."""

LIMITS = {"max_side": 128, "min_side": 64, "max_steps": 4, "max_images": 2, "max_prompt_chars": 200}
EXAMPLES = 30


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("schema"), tokens=False, job_seconds=0.0,
              sets=["queue.depth=200", "generation.max_job_seconds=1000", "queue.job_timeout_s=1000"],
              extra={"limits": LIMITS})
    try:
        yield a.wait_ready()
    finally:
        a.stop()


def _run(operation: Any, mode: schemathesis.GenerationMode, failures: list[str]) -> int:
    """Send bounded examples of one operation in one mode; record every check that fails (no shrinking)."""
    sent = [0]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        sent[0] += 1
        try:
            excluded = [positive_data_acceptance] if operation.label in IMAGE_INPUT else None
            case.call_and_validate(timeout=60, excluded_checks=excluded)
        except (Exception, BaseExceptionGroup) as exc:  # collect them all: one line per failure, then assert once
            first = str(exc).strip().splitlines()
            failures.append(f"{operation.label} [{mode.value}]: {' / '.join(first[:40])[:3000]}")

    try:
        run()
    except Unsatisfiable:  # nothing to negate (e.g. GET /livez has no parameters)
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return sent[0]


def test_every_check_holds_on_every_operation(agent: Agent) -> None:
    loaded = schemathesis.openapi.from_url(agent.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    sent = 0
    for result in loaded.get_all_operations():
        assert isinstance(result, Ok), f"an operation of the schema did not load: {result}"
        operation = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            sent += _run(operation, mode, failures)
    assert operations >= 15 and sent >= operations * EXAMPLES // 2
    assert not failures, "\n".join(sorted(set(failures)))
