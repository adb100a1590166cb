"""Fleet mode's claim order on a real PostgreSQL: highest priority first, oldest first within a level."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zitops.agent.storage.store_pg import PgJobStore
from zitops.engine.request import GenerationRequest

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

pytest_plugins = ["tests.pg_support"]


def test_claims_take_the_highest_priority_first(pg_db: PgDatabase) -> None:
    store = PgJobStore(pg_db.url, password_file=pg_db.password_file, agent_id="a")
    try:
        ids = {}
        for name, priority in (("low", 0), ("normal", 1), ("high", 2), ("normal2", 1), ("high2", 2), ("old", None)):
            extra = {} if priority is None else {"priority": priority}
            req = GenerationRequest(prompt=name, seeds=(1,), width=64, height=64, steps=2, extra=extra)
            ids[store.add(req).id] = name
        got = [ids[r.id] for _ in range(3) for r in store.claim("a", "w0", limit=2)]
        assert got == ["high", "high2", "normal", "normal2", "old", "low"]  # no priority: normal (1)
        with pg_db.connect() as conn:  # the claim's order has its own index
            plan = conn.execute("EXPLAIN SELECT id FROM zitops.jobs WHERE status = 'queued' ORDER BY "
                                "coalesce((request -> 'extra' ->> 'priority')::integer, 1) DESC, seq LIMIT 1"
                                ).fetchall()
        assert "jobs_queued_priority" in " ".join(str(r[0]) for r in plan)
    finally:
        store.close()
