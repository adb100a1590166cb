"""The tier policy (card memory -> profile) and ``--profile auto`` on recorded NVML readings."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import fake_weights, run_cli
from tests.nvml_support import RecordedNvml, Sample
from zitops.deployment import deploy
from zitops.preflight.doctor import need_gib, resolve
from zitops.preflight.doctor_model import DoctorRequest
from zitops.profile import load_profile
from zitops.tiers import MIN_MIB, TIERS, Card, TierError, choose_tier, tier_for_mib

BIN = "/usr/local/bin/zitops"


@pytest.mark.parametrize(("mib", "profile"), [
    (143_771, "designer"), (24_564, "designer"), (22_528, "designer"),  # H200, 24 GB, the boundary
    (22_527, "lowvram"), (20_475, "lowvram"), (16_376, "lowvram"), (15_872, "lowvram"),  # 20 GB, 16 GB
    (15_871, "lowvram-12"), (12_282, "lowvram-12"), (11_776, "lowvram-12"),  # 12 GB
    (11_775, "lowvram-8"), (11_264, "lowvram-8"), (10_240, "lowvram-8"), (8_188, "lowvram-8"),  # 11, 10, 8 GB
    (7_680, "lowvram-8"),
])
def test_each_card_size_gets_the_largest_tier_that_fits(mib: float, profile: str) -> None:
    assert tier_for_mib(mib) == profile
    load_profile(profile)  # every tier the policy names is a built-in profile


@pytest.mark.parametrize("mib", [MIN_MIB - 1, 6_144, 4_096, 0])
def test_below_8_gb_is_refused_naming_the_minimum(mib: float) -> None:
    with pytest.raises(TierError, match=r"lowvram-8, which needs at least 7680 MiB \(7.5 GiB"):
        tier_for_mib(mib)


def test_the_smallest_card_decides_and_no_gpu_is_only_for_the_tiny_model() -> None:
    cards = [Card(0, "NVIDIA H200", 143_771), Card(1, "NVIDIA GeForce RTX 3060", 12_288)]
    choice = choose_tier(cards, tiny=False)
    assert choice.profile == "lowvram-12"
    assert "smallest of 2 GPUs, 1 (NVIDIA GeForce RTX 3060)" in choice.reason and "12288 MiB" in choice.reason
    assert choose_tier([], tiny=True).profile == "designer"
    with pytest.raises(TierError, match="no GPU seen.*--model tiny"):
        choose_tier([], tiny=False)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedNvml]:
    """pynvml at its import edge, replaying one card's reading."""
    recorded = RecordedNvml(Sample(used_mib=0.0), name="NVIDIA GeForce RTX 4070")
    monkeypatch.setitem(sys.modules, "pynvml", recorded)
    yield recorded


@pytest.mark.parametrize(("total_mib", "profile"), [
    (12_282, "lowvram-12"), (8_188, "lowvram-8"), (16_376, "lowvram"), (143_771, "designer"),
])
def test_deploy_profile_auto_renders_the_tier_of_the_recorded_card(tmp_path: Path, nvml: RecordedNvml,
                                                                   total_mib: float, profile: str) -> None:
    nvml.play(Sample(used_mib=300.0, total_mib=total_mib))
    weights = str(fake_weights(tmp_path / "weights"))
    plan = deploy.plan(deploy.DeployRequest(profile="auto", model=weights, out=tmp_path / "d", zitops_bin=BIN))
    assert plan.profile.name == profile and plan.config.profile.name == profile
    assert plan.tier is not None and plan.tier.profile == profile
    config = plan.file("config.yaml").content
    assert f'# --profile auto chose "{profile}" for this host\'s GPUs:' in config
    assert f"GPU 0 (NVIDIA GeForce RTX 4070) has {total_mib} MiB" in config
    assert nvml.inits == nvml.shutdowns >= 1


def test_deploy_profile_auto_through_the_cli(tmp_path: Path, nvml: RecordedNvml,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    nvml.play(Sample(used_mib=300.0, total_mib=8_188))
    code, out, err = run_cli(capsys, "deploy", "--profile", "auto", "--model", str(fake_weights(tmp_path / "w")),
                             "--out", str(tmp_path / "d"), "--target", "supervisor")
    assert code == 0, err
    assert out.startswith("profile auto: lowvram-8 (GPU 0 (NVIDIA GeForce RTX 4070) has 8188 MiB")
    nvml.play(Sample(used_mib=300.0, total_mib=6_144))
    code, out, err = run_cli(capsys, "deploy", "--profile", "auto", "--model", str(fake_weights(tmp_path / "w")),
                             "--out", str(tmp_path / "d2"), "--target", "supervisor")
    assert code != 0 and "needs at least 7680 MiB" in err and "Traceback" not in err
    assert not (tmp_path / "d2" / "config.yaml").exists()


def test_without_nvml_auto_picks_designer_for_tiny_and_refuses_real_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError: no NVML here
    plan = deploy.plan(deploy.DeployRequest(profile="auto", model="tiny", out=tmp_path / "d", zitops_bin=BIN))
    assert plan.profile.name == "designer" and plan.tier is not None and "no GPU seen" in plan.tier.reason
    with pytest.raises(TierError, match="no GPU seen through NVML, and real weights need one"):
        deploy.plan(deploy.DeployRequest(profile="auto", model=str(fake_weights(tmp_path / "w")),
                                         out=tmp_path / "d", zitops_bin=BIN))


def test_doctor_profile_auto_checks_the_tier_of_the_card(tmp_path: Path, nvml: RecordedNvml) -> None:
    nvml.play(Sample(used_mib=300.0, total_mib=12_282))
    setup = resolve(DoctorRequest(profile="auto", model=str(fake_weights(tmp_path / "w")), out=tmp_path / "d"))
    assert setup.profile.name == "lowvram-12"


def test_doctor_reports_the_tier_each_card_gets(tmp_path: Path) -> None:
    from zitops.preflight.doctor_checks import check_tier
    from zitops.preflight.doctor_model import GpuSeen, Probe

    setup = resolve(DoctorRequest(profile="designer", model=str(fake_weights(tmp_path / "w")), out=tmp_path / "d"))
    small = check_tier(setup, True, Probe([GpuSeen(0, "NVIDIA GeForce RTX 3060", 12_288)], True))
    assert small.ok and small.detail.startswith("--profile auto picks lowvram-12: GPU 0 (NVIDIA GeForce RTX 3060)")
    assert "(this check uses designer)" in small.detail
    tiny_card = check_tier(setup, True, Probe([GpuSeen(0, "NVIDIA GeForce GTX 1060", 6_144)], True))
    assert not tiny_card.ok and "needs at least 7680 MiB" in tiny_card.detail and tiny_card.fix
    no_gpu = check_tier(setup, False, Probe())
    assert no_gpu.ok and "picks designer" in no_gpu.detail


@pytest.mark.parametrize(("least_mib", "profile"), TIERS)
def test_each_tier_peaks_below_the_smallest_card_it_is_chosen_for(least_mib: int, profile: str) -> None:
    # The doctor's memory check on a card at the tier's threshold passes: the tier's measured
    # peak fits the smallest card the policy gives it, as NVML reports that card.
    assert need_gib(load_profile(profile)) <= least_mib / 1024
