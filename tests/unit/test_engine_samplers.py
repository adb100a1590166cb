"""Sampler and schedule names: A1111 names in, canonical names out, unsound names refused."""

from __future__ import annotations

import pytest

from zitops.engine.samplers import (
    SAMPLER_INFO,
    SCHEDULE_INFO,
    display_name,
    resolve_sampler,
    resolve_schedule,
)
from zitops.errors import InvalidRequest
from zitops.profile import SAMPLERS, SCHEDULES


@pytest.mark.parametrize(("name", "expected"), [
    ("Euler", ("euler", None)),
    ("euler", ("euler", None)),
    ("Euler a", ("euler_a", None)),
    ("k_euler_a", ("euler_a", None)),
    ("Heun", ("heun", None)),
    ("DPM++ 2M", ("dpmpp_2m", None)),
    ("dpm++ 2m sde", ("dpmpp_2m_sde", None)),
    ("DPM++ 2M SDE", ("dpmpp_2m_sde", None)),
    ("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
    ("DPM++ 2M SDE Karras", ("dpmpp_2m_sde", "karras")),
    ("Euler Exponential", ("euler", "exponential")),
    ("UniPC", ("unipc", None)),
    ("LCM", ("lcm", None)),
])
def test_resolves_a1111_and_canonical_names(name: str, expected: tuple[str, str | None]) -> None:
    assert resolve_sampler(name) == expected


@pytest.mark.parametrize("name", ["DDIM", "ddim", "PNDM", "PLMS", "LMS Karras"])
def test_noise_prediction_samplers_are_refused_with_the_valid_list(name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_sampler(name)
    msg = str(info.value)
    assert "flow-matching" in msg
    for canonical in SAMPLERS:
        assert canonical in msg


def test_unknown_sampler_lists_valid_names() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown 'bogus'.*DPM\+\+ 2M SDE.*dpmpp_2m_sde"):
        resolve_sampler("bogus")


def test_sampler_info_covers_every_profile_sampler_in_a1111_shape() -> None:
    assert sorted(i["sampler"] for i in SAMPLER_INFO) == sorted(SAMPLERS)
    for info in SAMPLER_INFO:
        assert set(info) >= {"name", "aliases", "options"}
        assert resolve_sampler(info["name"])[0] == info["sampler"]
        for alias in info["aliases"]:
            assert resolve_sampler(alias)[0] == info["sampler"]


def test_schedules_resolve_labels_and_refuse_unknown() -> None:
    assert [i["name"] for i in SCHEDULE_INFO] == list(SCHEDULES)
    assert resolve_schedule("Karras") == "karras"
    assert resolve_schedule("Automatic") == "simple"
    assert resolve_schedule("exponential") == "exponential"
    with pytest.raises(InvalidRequest, match="valid: simple, karras, exponential"):
        resolve_schedule("polyexponential")


def test_display_name_round_trips() -> None:
    assert display_name("dpmpp_2m", "karras") == "DPM++ 2M Karras"
    assert resolve_sampler(display_name("dpmpp_2m_sde", "exponential")) == ("dpmpp_2m_sde", "exponential")
