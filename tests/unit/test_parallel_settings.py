"""engine.parallel at the edge: what splits Z-Image's 30 heads, one-line errors naming the field, and the
pool's groups (which GPUs make a slot, which card the high-water rule reads)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from zitops.agent.http.api_common import build_request
from zitops.agent.workers.groups import (
    SlotDevices,
    fullest,
    group_visible,
    slot_devices,
    spares_off,
)
from zitops.agent.workers.watchdog import GpuMemory
from zitops.config import config_from_mapping
from zitops.engine.features.parallel import check_request
from zitops.engine.request import GenerationRequest
from zitops.errors import ConfigError, InvalidRequest, ProfileError
from zitops.parallel_settings import ParallelSettings, parallel_problem
from zitops.profile import load_profile


@pytest.mark.parametrize(("kind", "degree"), [("ulysses", 2), ("ring", 2), ("ring", 4), ("ring", 8)])
def test_the_splits_that_fit_30_heads_and_32_token_padding(kind: str, degree: int) -> None:
    assert ParallelSettings(kind=kind, degree=degree).degree == degree  # type: ignore[arg-type]
    assert parallel_problem(kind, degree, 30) is None


@pytest.mark.parametrize(("over", "says"), [
    ("engine.parallel.degree=4", "degree 4 with kind ulysses: 30 heads do not divide by 4 (ulysses allows 2; "
                                 "use kind: ring)"),
    ("engine.parallel.degree=3", "degree 3: the sequence (padded to multiples of 32) splits only into 2, 4 or 8"),
    ("engine.parallel.degree=0", "engine.parallel.degree: Input should be greater than or equal to 1"),
    ("engine.parallel.kind=tensor", "engine.parallel.kind: Input should be 'ulysses' or 'ring'"),
])
def test_a_bad_parallel_knob_is_one_line_naming_the_field(over: str, says: str) -> None:
    with pytest.raises(ProfileError) as err:
        load_profile("designer", overrides=[over])
    text = str(err.value)
    assert says in text and "engine.parallel" in text and "\n" not in text


def test_the_tiny_models_two_heads_take_ulysses_2_and_not_more() -> None:
    assert parallel_problem("ulysses", 2, 2) is None
    assert "2 heads do not divide by 4" in (parallel_problem("ulysses", 4, 2) or "")


def config(tmp: Path, degree: int, gpus: list[int] | str) -> dict[str, object]:
    profile = load_profile("designer", overrides=[f"engine.parallel.degree={degree}", "engine.parallel.kind=ring"])
    return {"profile": profile.model_dump(mode="json"), "gpus": gpus,
            "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")}}


def test_the_gpus_must_come_in_whole_groups(tmp_path: Path) -> None:
    assert config_from_mapping(config(tmp_path, 2, [0, 1, 2, 3])).profile.engine.parallel.degree == 2
    config_from_mapping(config(tmp_path, 4, "auto"))  # checked against the GPUs found, by the pool
    with pytest.raises(ConfigError) as err:
        config_from_mapping(config(tmp_path, 4, [0, 1, 2]))
    assert "profile.engine.parallel.degree 4 needs the GPUs in groups of 4; gpus [0, 1, 2] has 3" in str(err.value)


def test_one_slot_per_group_of_gpus() -> None:
    assert slot_devices([0, 1], 1) == [SlotDevices(0), SlotDevices(1)]
    assert slot_devices([0, 1, 2, 3], 2) == [SlotDevices(0, (0, 1)), SlotDevices(2, (2, 3))]
    assert slot_devices([4, 5, 6, 7, 1], 4) == [SlotDevices(4, (4, 5, 6, 7))]  # "auto" found one card too many
    assert slot_devices([None], 2) == [SlotDevices(None)]  # the CPU: one group, its ranks on the CPU
    with pytest.raises(ConfigError, match="this host gives the agent 1 GPU"):
        slot_devices([0], 2)
    with pytest.raises(ConfigError, match="kind ring needs GPUs"):
        slot_devices([None], 2, "ring")


def test_a_group_sees_all_its_cards_in_rank_order() -> None:
    assert group_visible(()) is None
    assert group_visible((2, 3)) == "2,3"
    assert group_visible((2, 3), {2: "GPU-a", 3: "GPU-b"}) == "GPU-a,GPU-b"


def test_the_high_water_rule_reads_the_fullest_card_of_a_group() -> None:
    cards = {0: GpuMemory(0, 40_000, 80_000, {}), 1: GpuMemory(1, 78_000, 80_000, {}),
             2: GpuMemory(2, 79_000, 80_000, {})}
    assert fullest(0, (0, 1), cards) == cards[1]  # card 2 belongs to another slot
    assert fullest(0, (), cards) == cards[0]
    assert fullest(None, (), cards) is None


def test_groups_run_without_spares() -> None:
    assert spares_off(1, True, "auto", True) == []
    assert spares_off(2, True, "auto", True) == ["standby_worker", "hot_spare", "overlap_recycle"]
    assert spares_off(2, False, False, False) == []


def test_a_group_refuses_what_it_cannot_split_with_a_422_naming_the_field(tmp_path: Path) -> None:
    ring = ParallelSettings(degree=2, kind="ring")
    ulysses = ParallelSettings(degree=2, kind="ulysses")
    plain = GenerationRequest(prompt="a fox", seeds=(1,), width=64, height=64, steps=2)
    check_request(ring, plain)
    check_request(ulysses, replace(plain, guidance=3.0))  # Ulysses gathers the caption mask: exact
    with pytest.raises(InvalidRequest, match=r"^guidance: 3.0 needs engine.parallel.kind ulysses"):
        check_request(ring, replace(plain, guidance=3.0))
    with pytest.raises(InvalidRequest, match=r"^control_image: ControlNet is not available with engine.parallel"):
        check_request(ulysses, replace(plain, control_image="cG5n"))
    check_request(ParallelSettings(), replace(plain, guidance=3.0, control_image="cG5n"))  # degree 1: anything
    # At the edge: the agent's request builder refuses it before it is queued.
    agent = config_from_mapping(config(tmp_path, 2, [0, 1]))  # kind ring
    with pytest.raises(InvalidRequest, match=r"^guidance: "):
        build_request(agent, "a fox", guidance=3.0)
    assert build_request(agent, "a fox").guidance == 0.0
