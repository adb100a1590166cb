"""The webhook ledger's contract, on the agent's SQLite store and on a real PostgreSQL (fleet mode).

Deliveries open once per final job that carries a webhook, one attempt per
job runs at a time (a claim that runs out is taken up again), and the sweep
finds final jobs that ended with no one to open their delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from zitops.agent.storage.jobs import JobStore
from zitops.agent.storage.webhook_ledger import SqliteLedger
from zitops.engine.request import GenerationRequest

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

pytest_plugins = ["tests.pg_support"]

HOOK = {"url": "http://127.0.0.1:9/hook", "address": "127.0.0.1"}


def _req(hook: bool = True) -> GenerationRequest:
    return GenerationRequest(prompt="p", seeds=(1,), width=64, height=64, steps=2,
                             extra={"webhook": HOOK} if hook else {})


Pair = tuple[Any, Any]


@pytest.fixture(params=["sqlite", "postgresql"])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Pair]]:
    """``opened()``: a (job store, webhook ledger) pair on one database; more calls: more agents on it."""
    made: list[Pair] = []

    def open_pair() -> Pair:
        if request.param == "sqlite":
            store: Any = JobStore(tmp_path / "state")
            ledger: Any = SqliteLedger(store.path)
        else:
            from zitops.agent.storage.store_pg import PgJobStore
            from zitops.agent.storage.webhook_pg import PgLedger

            db: PgDatabase = request.getfixturevalue("pg_db")
            store = PgJobStore(db.url, password_file=db.password_file, agent_id=f"agent-{len(made)}")
            ledger = PgLedger(store, grace_s=0.0)
        made.append((store, ledger))
        return store, ledger

    yield open_pair
    for store, ledger in made:
        ledger.close()
        store.close()


def _finished(store: Any, hook: bool = True) -> str:
    job_id: str = store.add(_req(hook)).id
    store.start(job_id, "w0")
    store.succeed(job_id, ("a.png",), {})
    return job_id


def test_a_final_job_opens_one_delivery_claimed_by_its_opener(opened: Callable[[], Pair]) -> None:
    store, ledger = opened()
    queued = store.add(_req()).id
    assert ledger.open(queued, 60) is None  # not final yet
    job_id = _finished(store)
    first = ledger.open(job_id, 60)
    assert first is not None and first.url == HOOK["url"] and first.address == "127.0.0.1"
    assert first.job["status"] == "succeeded" and first.job["images"] == 1 and first.attempts == 0
    assert ledger.open(job_id, 60) is None  # once
    assert ledger.claim(60, 10) == []  # claimed: no second attempt at the same time
    assert ledger.open(_finished(store, hook=False), 60) is None


def test_a_retry_is_claimed_when_due_and_a_lapsed_claim_is_taken_up(opened: Callable[[], Pair]) -> None:
    store, ledger = opened()
    job_id = _finished(store)
    assert ledger.open(job_id, 60) is not None
    ledger.settle(job_id, attempts=1, state="pending", next_in_s=3600, status=500, error="HTTP 500")
    assert ledger.claim(60, 10) == []  # not due for an hour
    ledger.settle(job_id, attempts=1, state="pending", next_in_s=0, status=500, error="HTTP 500")
    (again,) = ledger.claim(0.0, 10)  # a claim that runs out at once: as if its agent died mid-attempt
    assert again.attempts == 1
    (lapsed,) = ledger.claim(60, 10)
    assert lapsed.job["id"] == job_id
    assert ledger.claim(60, 10) == []
    ledger.settle(job_id, attempts=2, state="delivered", next_in_s=0, status=204, error=None)
    summary = ledger.summary()
    assert summary["counts"] == {"delivered": 1}
    assert summary["recent"][0]["attempts"] == 2 and summary["recent"][0]["last_status"] == 204


def test_the_sweep_opens_deliveries_no_one_opened(opened: Callable[[], Pair]) -> None:
    store, ledger = opened()
    missed = _finished(store)
    _finished(store, hook=False)
    ledger.sweep()
    (found,) = ledger.claim(60, 10)
    assert found.job["id"] == missed
    assert ledger.open(missed, 60) is None


def test_two_agents_never_claim_the_same_delivery(opened: Callable[[], Pair]) -> None:
    store, a = opened()
    _, b = opened()
    ids = {_finished(store) for _ in range(6)}
    a.sweep()
    got_a, got_b = a.claim(60, 4), b.claim(60, 4)
    ids_a, ids_b = {d.job["id"] for d in got_a}, {d.job["id"] for d in got_b}
    assert not ids_a & ids_b and ids_a | ids_b == ids
