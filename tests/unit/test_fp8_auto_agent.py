"""``engine.fp8: auto`` settled once by the agent, so its edge and its workers agree about LoRAs.

The agent reads each worker GPU's compute capability through NVML (replayed
at the pynvml import edge here) and turns "auto" into true only when every
worker's GPU has fp8 GEMMs; the edge's LoRA check then refuses exactly when
the workers' layers are fp8.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nvml_support import RecordedNvml, Sample
from tests.runtime_support import runtime_config
from zitops.agent.http.api_inputs import lora_overrides
from zitops.agent.server import settle_fp8
from zitops.config import AgentConfig
from zitops.engine.precision.fp8 import mode_for, settle_auto
from zitops.errors import InvalidRequest


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedNvml]:
    """pynvml at its import edge, replaying one H200 (compute capability 9.0)."""
    recorded = RecordedNvml(Sample(used_mib=0.0, total_mib=143_771.0))
    monkeypatch.setitem(sys.modules, "pynvml", recorded)
    yield recorded


def _config(tmp_path: Path, fp8: str, gpus: str | list[int] = "auto") -> AgentConfig:
    return runtime_config(tmp_path, sets=[f"engine.fp8={fp8}"], gpus=gpus)


@pytest.mark.parametrize(("setting", "gemm", "mode"), [
    (False, True, None), (True, True, "gemm"), (True, False, "weight_only"), ("weight_only", True, "weight_only"),
    ("auto", True, "gemm"), ("auto", False, None),
])
def test_each_setting_gives_its_mode_with_and_without_fp8_gemms(setting: bool | str, gemm: bool,
                                                                  mode: str | None) -> None:
    assert mode_for(setting, gemm) == mode


def test_auto_is_on_only_when_every_worker_gpu_has_fp8_gemms() -> None:
    assert settle_auto("auto", [(9, 0), (8, 9)]) is True
    assert settle_auto("auto", [(9, 0), (8, 6)]) is False  # one Ampere card: its worker would run bf16
    assert settle_auto("auto", [None]) is False  # a CPU worker
    assert settle_auto("auto", [(9, 0), None]) is False  # NVML could not say for one card
    assert settle_auto(True, [None]) is True and settle_auto("weight_only", []) == "weight_only"


def test_on_a_hopper_card_auto_becomes_fp8_and_the_edge_refuses_loras(tmp_path: Path, nvml: RecordedNvml) -> None:
    settled = settle_fp8(_config(tmp_path, "auto"))
    assert settled.profile.engine.fp8 is True
    with pytest.raises(InvalidRequest, match="loras: not available while engine.fp8 is on"):
        lora_overrides(settled, [("style", 1.0)])


def test_on_an_older_card_or_the_cpu_auto_is_off_and_loras_pass_the_edge(tmp_path: Path,
                                                                        nvml: RecordedNvml) -> None:
    nvml.capability = (8, 6)  # an RTX 3090: no fp8 GEMMs
    ampere = settle_fp8(_config(tmp_path / "a", "auto"))
    nvml.capability = None  # NVML cannot tell: the safe answer is bf16
    unknown = settle_fp8(_config(tmp_path / "u", "auto"))
    cpu = settle_fp8(_config(tmp_path / "c", "auto", gpus=[]))  # no GPU listed: one CPU worker
    for settled in (ampere, unknown, cpu):
        assert settled.profile.engine.fp8 is False
        # Past the fp8 check: the next one is the LoRA directory's (none is configured here).
        with pytest.raises(InvalidRequest) as refused:
            lora_overrides(settled, [("style", 1.0)])
        assert "engine.fp8" not in str(refused.value)


def test_other_settings_are_left_as_they_are(tmp_path: Path, nvml: RecordedNvml) -> None:
    for setting, expected in (("true", True), ("false", False), ("weight_only", "weight_only")):
        assert settle_fp8(_config(tmp_path / setting, setting)).profile.engine.fp8 == expected
