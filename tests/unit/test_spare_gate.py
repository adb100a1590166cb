"""The spare-build policy: a pure function of the slot's busy or idle state."""

from __future__ import annotations

import pytest

from zitops.agent.workers.spare_gate import IDLE_GRACE_S, GateDecision, gated, spare_gate


def test_always_keeps_the_gate_open_even_while_the_slot_serves() -> None:
    assert not gated("always")
    assert spare_gate("always", slot_busy=True, idle_for_s=None) == GateDecision(True)


def test_idle_closes_the_gate_while_the_slot_serves() -> None:
    assert gated("idle")
    assert spare_gate("idle", slot_busy=True, idle_for_s=None) == GateDecision(False)


@pytest.mark.parametrize("idle_for", [IDLE_GRACE_S, IDLE_GRACE_S + 10.0, None])
def test_idle_opens_once_the_slot_was_idle_for_the_grace(idle_for: float | None) -> None:
    assert spare_gate("idle", slot_busy=False, idle_for_s=idle_for) == GateDecision(True)


def test_idle_inside_the_grace_stays_closed_and_asks_again_when_it_ends() -> None:
    decision = spare_gate("idle", slot_busy=False, idle_for_s=0.2, grace_s=0.5)
    assert not decision.open and decision.ask_again_s == pytest.approx(0.3)
