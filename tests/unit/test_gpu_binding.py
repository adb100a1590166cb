"""A worker's card by UUID: the map from NVML, the environment it sets, and the mismatch check."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from tests.nvml_support import CARD_UUIDS, RecordedCards, Sample
from tests.runtime_support import runtime_config
from zitops.agent.workers.pool import Pool
from zitops.agent.workers.slots import PoolListener
from zitops.agent.workers.vram import NvmlReader, Vram
from zitops.agent.workers.watchdog import device_mismatch
from zitops.gpu import uuid_hex
from zitops.worker.preimport import device_environment, opened_device
from zitops.worker.protocol import Ready

HEX = "5b1e2c3d0a1b4c2d8e3f102030405060"


def test_uuid_hex_reads_nvml_and_torch_forms_alike() -> None:
    assert uuid_hex(CARD_UUIDS[0]) == HEX  # NVML: GPU-8-4-4-4-12
    assert uuid_hex("5B1E2C3D-0A1B-4C2D-8E3F-102030405060") == HEX  # torch's str(props.uuid), any case
    assert uuid_hex(f"GPU-{HEX}") == HEX
    assert uuid_hex(None) is None and uuid_hex("0") is None and uuid_hex("GPU-not-a-uuid") is None


def test_the_uuids_come_from_the_watchdogs_own_nvml_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = RecordedCards([Sample(0.0), Sample(0.0)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    vram = Vram(NvmlReader())
    assert vram.uuids([1, 0]) == {0: CARD_UUIDS[0], 1: CARD_UUIDS[1]}
    assert vram.refresh([0, 1]) is None and [g.index for g in vram.gpus] == [0, 1]
    assert nvml.inits == 1, "one NVML session: the memory reads use the handles the UUIDs came from"
    vram.close()
    # An index NVML does not have gets no UUID (the worker falls back to the index); no NVML: none at all.
    monkeypatch.setitem(sys.modules, "pynvml", RecordedCards([Sample(0.0), Sample(0.0)]))
    assert Vram(NvmlReader()).uuids([1, 7]) == {1: CARD_UUIDS[1]}
    assert Vram(lambda indices: []).uuids([0]) == {}  # a reader without UUIDs


def test_the_worker_environment_names_the_card_by_uuid_or_index(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.setenv(var, "inherited")
    device_environment(1, CARD_UUIDS[1])
    assert opened_device(1) == {"index": 1, "visible": CARD_UUIDS[1], "uuid": None}  # CUDA never initialised
    device_environment(1)  # no NVML: the index, numbered in PCI bus order as NVML does
    assert (opened_device(1)["visible"], opened_device(1)["index"]) == ("1", 1)
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    device_environment(None, CARD_UUIDS[0])  # a CPU worker sees no GPU at all
    assert opened_device(None)["visible"] == ""


def test_device_mismatch_only_when_both_uuids_are_known_and_differ() -> None:
    same = {"index": 0, "visible": CARD_UUIDS[0], "uuid": "5b1e2c3d-0a1b-4c2d-8e3f-102030405060"}
    assert device_mismatch(0, CARD_UUIDS[0], same) is None
    other = {**same, "uuid": CARD_UUIDS[1]}
    why = device_mismatch(0, CARD_UUIDS[0], other)
    assert why is not None and CARD_UUIDS[1] in why and "GPU 0" in why and "CUDA_VISIBLE_DEVICES" in why
    # Nobody can tell: a CPU worker, no NVML, a worker that opened no CUDA device, an unreadable UUID.
    assert device_mismatch(None, CARD_UUIDS[0], other) is None
    assert device_mismatch(0, None, other) is None
    assert device_mismatch(0, CARD_UUIDS[0], {**same, "uuid": None}) is None
    assert device_mismatch(0, CARD_UUIDS[0], {**same, "uuid": "GPU-?"}) is None
    assert device_mismatch(0, CARD_UUIDS[0], None) is None


class _Listener:
    """The pool's listener: keeps the events, takes the Ready."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def on_ready(self, slot: Any) -> None:
        pass


@pytest.mark.parametrize(("opened", "kinds"), [
    (CARD_UUIDS[1], ["gpu_mismatch"]),  # CUDA opened the other card: the watchdog would read the wrong one
    ("5b1e2c3d-0a1b-4c2d-8e3f-102030405060", []),  # torch's form of the right card's UUID
    (None, []),  # no CUDA device opened: nothing to tell
])
def test_the_pool_checks_the_card_a_worker_opened_on_its_ready(tmp_path: Path, opened: str | None,
                                                               kinds: list[str]) -> None:
    listener = _Listener()
    pool = Pool(runtime_config(tmp_path, kind="faulty"), [0], cast(PoolListener, listener))
    pool.uuids[0] = CARD_UUIDS[0]
    (slot,) = pool.slots
    slot.state = "starting"  # as begin() leaves a fresh process's slot; no process is started here
    device = {"index": 0, "visible": CARD_UUIDS[0], "uuid": opened}
    pool._handle(slot, Ready(worker_id="w0", pid=4242, incarnation=0, device="cuda:0", setup_s=1.0,
                             startup={"device": device}))
    assert slot.state == "ready"  # a mismatch is told, never a reason to stop serving
    assert [e["kind"] for e in listener.events] == kinds
    if kinds:
        assert CARD_UUIDS[1] in listener.events[0]["reason"] and listener.events[0]["worker"] == "w0"
