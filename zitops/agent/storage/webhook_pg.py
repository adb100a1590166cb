"""Durable webhook deliveries in the fleet's PostgreSQL store (``zitops.webhook_deliveries``).

The same ledger as :mod:`zitops.agent.storage.webhook_ledger`, shared by every
agent: the agent that finishes a job opens and sends its delivery; retries
and deliveries whose agent died are claimed by any agent with ``FOR UPDATE
SKIP LOCKED`` and a claim that runs out. The table comes from migration
``0004_webhooks.sql``; the queries from ``sql/webhooks.sql``.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any, Protocol

from zitops.agent.storage.webhook_ledger import Delivery, delivery

SWEEP_GRACE_S = 30.0
"""A final job gets this long for its own agent to open its delivery before the sweep does."""

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def _queries() -> dict[str, str]:
    text = (resources.files("zitops.agent") / "sql" / "webhooks.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


class Runner(Protocol):
    """The store's one-statement runner (zitops.agent.storage.store_pg.PgJobStore.run) and its agent id."""

    agent_id: str

    def run(self, sql: str, **params: Any) -> list[Any]:
        """Rows of one statement."""


def _delivery(row: Any) -> Delivery | None:
    return delivery((row["id"], row["status"], row["error"], row["images"], row["created_at"],
                     row["finished_at"], row["webhook"]), int(row["attempts"]))


class PgLedger:
    """Webhook deliveries in PostgreSQL; every method is one short transaction on the store's pool."""

    def __init__(self, store: Runner, grace_s: float = SWEEP_GRACE_S) -> None:
        self.store = store
        self.grace_s = grace_s

    def open(self, job_id: str, claim_s: float) -> Delivery | None:
        """Open and claim the first delivery of a final job with a webhook; None otherwise."""
        rows = self.store.run(_queries()["open_delivery"], id=job_id, claim_s=claim_s,
                              agent_id=self.store.agent_id)
        return _delivery(rows[0]) if rows else None

    def sweep(self) -> int:
        """Open pending deliveries for final jobs past the grace period that have none."""
        self.store.run(_queries()["sweep_deliveries"], grace_s=self.grace_s)
        return 0

    def claim(self, claim_s: float, limit: int) -> list[Delivery]:
        """Claim due deliveries for this agent."""
        rows = self.store.run(_queries()["claim_deliveries"], claim_s=claim_s, limit=limit,
                              agent_id=self.store.agent_id)
        return [d for r in rows if (d := _delivery(r)) is not None]

    def settle(self, job_id: str, *, attempts: int, state: str, next_in_s: float,
               status: int | None, error: str | None) -> None:
        """Record an attempt's outcome."""
        self.store.run(_queries()["settle_delivery"], id=job_id, attempts=attempts, state=state,
                       next_in_s=next_in_s, status=status, error=error)

    def summary(self, limit: int = 10) -> dict[str, Any]:
        """Deliveries by state (fleet-wide) and the newest ``limit``."""
        counts = {r["state"]: int(r["n"]) for r in self.store.run(_queries()["delivery_counts"])}
        recent = [dict(r) for r in self.store.run(_queries()["recent_deliveries"], limit=limit)]
        return {"counts": counts, "recent": recent}

    def close(self) -> None:
        """Nothing: the store owns the connections."""
