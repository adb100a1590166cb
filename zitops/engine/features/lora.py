"""LoRA adapters on the worker's pipeline: each file loaded once, weights set per request.

diffusers' ``load_lora_weights`` (PEFT underneath) reads the diffusers/PEFT
format and converts the non-diffusers ones it knows for Z-Image (kohya /
ComfyUI style keys). Every adapter a request names is loaded on first use
and kept; a request then activates exactly its adapters with its weights
(``set_adapters``), and a request without LoRAs turns them off
(``disable_lora``), so switching costs no load. LoRAs target the separate
q/k/v and w1/w3 projections, so the first load undoes zitops' fused
projections (:func:`zitops.engine.precision.attention.unfuse_projections`) for the
rest of the worker's life; the fp8 path replaces those layers by float8
ones PEFT cannot wrap, so LoRAs are refused there.

With ``engine.lora_hotswap_rank`` set, a request for one LoRA uses a single
adapter slot padded to that rank (diffusers' ``enable_lora_hotswap``): a
switch copies the new LoRA's weights into the slot in place
(``load_lora_weights(..., hotswap=True)``), so the compiled blocks see the
same modules and tensors and do not recompile. Requests for several LoRAs at
once, or none, take the adapter path above.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zitops.engine.features.lora_files import FP8_REFUSAL, list_loras
from zitops.errors import InvalidRequest


class LoraAdapters:
    """The adapters loaded into one pipeline, by LoRA name."""

    def __init__(self, lora_dir: str | Path | None) -> None:
        self.lora_dir = lora_dir
        self.loaded: dict[str, str] = {}  # LoRA name -> PEFT adapter name
        self.unfused: dict[str, int] | None = None
        self.hotswap_rank = 0  # set by the engine from engine.lora_hotswap_rank
        self.hot: str | None = None  # the LoRA in the hot-swap slot
        self.hot_weight: float | None = None
        self.hot_active = False  # whether the slot is the active adapter (the multi-LoRA path switches away)
        self.hot_bases: list[tuple[dict[str, Any], float]] = []  # the slot's scalings and their weight-1 values

    def apply(self, pipe: Any, wanted: tuple[tuple[str, float], ...], *, fp8: bool,
              note: Callable[[str], None]) -> dict[str, Any]:
        """Make exactly ``wanted`` active on ``pipe``; returns what to record in the job's info."""
        if not wanted:
            if self.loaded or self.hot is not None:
                pipe.disable_lora()
            return {}
        if fp8:
            raise InvalidRequest(FP8_REFUSAL)
        files = list_loras(self.lora_dir)
        if self.hotswap_rank and len(wanted) == 1:
            return self._hotswap(pipe, wanted[0], files, note)
        for name, _ in wanted:
            if name not in self.loaded:
                self._load(pipe, name, files, note)
        pipe.enable_lora()
        pipe.set_adapters([self.loaded[name] for name, _ in wanted], [weight for _, weight in wanted])
        self.hot_active = False
        return {"loras": [{"name": name, "weight": weight} for name, weight in wanted]}

    def _hotswap(self, pipe: Any, wanted: tuple[str, float], files: dict[str, Path],
                 note: Callable[[str], None]) -> dict[str, Any]:
        name, weight = wanted
        if self.hot != name:
            path = self._path(name, files)
            first = self.hot is None
            if first:
                self._unfuse(pipe, name, note)
                # Compiled blocks are fine: the slot is made once here, before their (one) recompile.
                pipe.enable_lora_hotswap(target_rank=self.hotswap_rank, check_compiled="ignore")
            self._load_file(pipe, name, path, "hot", hotswap=not first)
            self.hot, self.hot_active = name, first or self.hot_active
            self.hot_weight = None
            # The slot's scalings are tensors (made so by enable_lora_hotswap), holding this LoRA's alpha/rank.
            self.hot_bases = [(m.scaling, float(m.scaling["hot"])) for m in pipe.transformer.modules()
                              if isinstance(getattr(m, "scaling", None), dict) and "hot" in m.scaling]
        pipe.enable_lora()
        if not self.hot_active:
            pipe.transformer.set_adapter("hot")  # activation only: set_adapters would rewrite the scalings
            self.hot_active = True
        if weight != self.hot_weight:
            self._weigh_slot(pipe, weight)
        return {"loras": [{"name": name, "weight": weight}], "lora_hotswap": True}

    def _weigh_slot(self, pipe: Any, weight: float) -> None:
        """The slot's weight, written into its scaling tensors in place (set_adapters would make them floats,
        which compiled code bakes in: a recompile per weight)."""
        import torch

        if all(isinstance(scaling["hot"], torch.Tensor) for scaling, _ in self.hot_bases):
            with torch.no_grad():
                for scaling, base in self.hot_bases:
                    scaling["hot"].fill_(base * weight)
        else:
            pipe.set_adapters(["hot"], [weight])
        self.hot_weight = weight

    @staticmethod
    def _path(name: str, files: dict[str, Path]) -> Path:
        path = files.get(name)
        if path is None:
            raise InvalidRequest(f"loras: unknown LoRA {name!r}; available: {', '.join(files) or 'none'}")
        return path

    def _load(self, pipe: Any, name: str, files: dict[str, Path], note: Callable[[str], None]) -> None:
        path = self._path(name, files)
        self._unfuse(pipe, name, note)
        adapter = f"lora{len(self.loaded)}"
        self._load_file(pipe, name, path, adapter)
        self.loaded[name] = adapter

    def _unfuse(self, pipe: Any, name: str, note: Callable[[str], None]) -> None:
        if self.unfused is None:
            from zitops.engine.precision.attention import unfuse_projections

            self.unfused = unfuse_projections(pipe.transformer)
            if any(self.unfused.values()):
                note(f"LoRA {name!r}: the fused projections were split again for LoRA layers "
                     f"({self.unfused}); they stay split while this worker lives")

    def _load_file(self, pipe: Any, name: str, path: Path, adapter: str, *, hotswap: bool = False) -> None:
        try:
            pipe.load_lora_weights(str(path), adapter_name=adapter, hotswap=hotswap)
        except Exception as exc:  # noqa: BLE001 - a bad file is the request's problem, not the worker's
            if not hotswap:
                with contextlib.suppress(Exception):  # nothing may have been loaded to delete
                    pipe.delete_adapters(adapter)
            elif adapter == "hot":
                self.hot = None  # a failed swap may have left the slot half written: reload it next time
                with contextlib.suppress(Exception):
                    pipe.delete_adapters(adapter)
            # The library's text may spell the file's absolute path: the caller sees the file name only.
            text = str(exc).replace(str(path.parent) + "/", "").replace(str(path.parent), "<lora_dir>")
            first = text.splitlines()[0][:200] if text else ""
            raise InvalidRequest(f"loras: {name!r} could not be loaded ({path.name}): "
                                 f"{type(exc).__name__}: {first}") from None
