"""LoRA hot-swap on the tiny pipeline: the same pixels as the adapter path, one slot, no recompile on a switch.

The second test compiles the tiny transformer's blocks on the CPU (about a minute on two busy cores) and
counts dynamo's graphs: a swap or a weight change that recompiled would add one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import pixels, request, settings, tiny_model_dir
from tests.lora_support import make_lora
from zitops.engine.diffusers_engine import DiffusersEngine

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def _engine(tmp: Path, loras: Path, **over: Any) -> DiffusersEngine:
    compile_on_cpu = bool(over.get("compile"))
    eng = DiffusersEngine(settings(**over), str(tiny_model_dir()), state_dir=tmp, cache_dir=tmp / "cache",
                          lora_dir=loras, compile_on_cpu=compile_on_cpu)
    eng.setup("cpu")
    return eng


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hot-loras")
    make_lora(tiny_model_dir(), root, "peft-style", seed=1)
    make_lora(tiny_model_dir(), root, "kohya_style", seed=2, kohya=True)
    return root


def test_hotswap_gives_the_adapter_paths_pixels_in_one_slot(tmp_path: Path, loras: Path) -> None:
    hot = _engine(tmp_path / "hot", loras, lora_hotswap_rank=8)
    plain = _engine(tmp_path / "plain", loras)
    base = request((3,), steps=2)
    for wanted in ((("peft-style", 1.0),), (("kohya_style", 0.7),), (("peft-style", 1.0),), (),
                   (("peft-style", 0.5), ("kohya_style", 0.5)), (("kohya_style", 1.0),)):
        a = hot.generate(replace(base, loras=wanted))
        b = plain.generate(replace(base, loras=wanted))
        assert int(abs(pixels(a.images[0]) - pixels(b.images[0])).max()) <= 1, wanted
        assert a.info.get("lora_hotswap", False) == (len(wanted) == 1)
    # Single-LoRA requests all went through the one slot: only the multi-LoRA request loaded adapters.
    assert hot.loras.hot == "kohya_style" and set(hot.loras.loaded) == {"peft-style", "kohya_style"}
    assert len(plain.loras.loaded) == 2


def test_a_hotswap_switch_does_not_recompile(tmp_path: Path, loras: Path) -> None:
    from torch._dynamo.utils import counters

    eng = _engine(tmp_path, loras, lora_hotswap_rank=8, compile=True)
    base = request((3,), steps=2)
    eng.generate(replace(base, loras=(("peft-style", 1.0),)))  # the slot's first load compiles once
    graphs = counters["stats"]["unique_graphs"]
    first = eng.generate(replace(base, loras=(("kohya_style", 1.0),)))
    again = eng.generate(replace(base, loras=(("peft-style", 1.0),)))
    half = eng.generate(replace(base, loras=(("peft-style", 0.5),)))  # a weight: written into the slot
    assert counters["stats"]["unique_graphs"] == graphs, "a hot-swap or a weight change recompiled the blocks"
    assert (pixels(first.images[0]) != pixels(again.images[0])).any()
    assert (pixels(half.images[0]) != pixels(again.images[0])).any()
