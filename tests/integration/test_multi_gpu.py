"""One worker per GPU: each worker on its own card (by NVML UUID), hot spares told apart, a kill -9 of one.

Two GPU slots on a machine without GPUs: ``pynvml`` is the recorded stand-in of
two H200s (tests/nvml_support.py), each with its own UUID, and the workers run
the fault engine with no fault (it only has to stand on a GPU slot). Everything
above NVML is the product: the pool reads each card's UUID, starts each worker
with ``CUDA_VISIBLE_DEVICES`` set to it, and the watchdog's reads of each card
are matched to that card's worker. On the GPU lane the same worker also reports
the UUID CUDA opened (tests/gpu/test_gpu_workers.py).

With room on the cards (these readings have it), ``watchdog.hot_spare: auto``
builds a hot spare per slot, listed in /status beside the workers with the
slot's id: the 2-GPU lane test waited for every entry to say "ready", which a
spare never says (docs/gpu-lane/2026-11-29-h200-x2.md). Entries carry a
``role`` now. The kill -9 test runs the real tiny pipeline on two CPU slots.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nvml_support import CARD_UUIDS, WORKER_A, WORKER_B, RecordedCards, Sample
from tests.runtime_support import Runtime, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow

CARD_A = Sample(used_mib=31_020, processes={WORKER_A: 30_480})
CARD_B = Sample(used_mib=28_500, processes={WORKER_B: 27_960})


def _entries(rt: Runtime, role: str) -> list[dict[str, Any]]:
    return [w for w in rt.status()["workers"] if w["role"] == role]


def _slots_ready(rt: Runtime, count: int) -> list[dict[str, Any]] | None:
    """The slots' worker entries, by GPU, once every one of them is ready."""
    ws = sorted(_entries(rt, "worker"), key=lambda w: str(w["gpu"]))
    return ws if len(ws) == count and all(w["state"] == "ready" for w in ws) else None


@pytest.fixture
def cards(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedCards]:
    recorded = RecordedCards([CARD_A, CARD_B])
    monkeypatch.setitem(sys.modules, "pynvml", recorded)
    yield recorded


def test_each_worker_is_bound_to_its_own_card_by_uuid_and_spares_are_told_apart(
        tmp_path: Path, cards: RecordedCards) -> None:
    rt = Runtime(runtime_config(tmp_path, kind="faulty", sets=["watchdog.idle_cache_clear_mib=0"]), gpus=[0, 1])
    try:
        w0, w1 = wait_until(lambda: _slots_ready(rt, 2), 60, what="both slots' workers")
        for w in (w0, w1):
            # The card by its NVML UUID, not by an index CUDA might number otherwise.
            assert w["startup"]["device"] == {"index": w["gpu"], "visible": CARD_UUIDS[w["gpu"]], "uuid": None}
        assert (w0["id"], w0["gpu"], w1["id"], w1["gpu"]) == ("w0", 0, "w1", 1) and w0["pid"] != w1["pid"]

        # Each card's NVML process list names its own worker: the watchdog matches them card by card.
        cards.play_cards([CARD_A, CARD_B], a=w0["pid"], b=w1["pid"])

        def matched() -> bool:
            by_id = {w["id"]: w["vram"] for w in _entries(rt, "worker")}
            return ((by_id["w0"]["nvml_used_mib"], by_id["w0"]["device_used_mib"]) == (30_480, 31_020)
                    and (by_id["w1"]["nvml_used_mib"], by_id["w1"]["device_used_mib"]) == (27_960, 28_500))

        wait_until(matched, 30, what="NVML's per-card reads matched to each card's worker")

        # Both cards have room for a second copy, so `hot_spare: auto` builds one per slot, as on the
        # 2-GPU H200. Listed beside the workers, with the slot's id, and never "ready".
        wait_until(lambda: len(rt.events("hot_spare_ready")) == 2, 60, what="a hot spare per slot")
        spares = _entries(rt, "hot_spare")
        assert sorted((s["id"], s["gpu"], s["state"]) for s in spares) == [("w0", 0, "spare"), ("w1", 1, "spare")]
        for s in spares:
            assert s["startup"]["device"]["visible"] == CARD_UUIDS[s["gpu"]]
        states = [w["state"] for w in rt.status()["workers"]]
        assert not all(s == "ready" for s in states), "the lane's old wait: it could never end"
        assert _slots_ready(rt, 2) is not None
        assert not rt.events("gpu_mismatch")
    finally:
        rt.close()


def test_a_kill_9_of_one_worker_leaves_the_other_serving(tmp_path: Path) -> None:
    # Two CPU slots with the real tiny pipeline; no hot spare (auto: never on the CPU), no standby
    # spare, and a restart backoff that keeps w0 down while the job runs on w1.
    sets = ["watchdog.standby_worker=false", "watchdog.restart_backoff_s=3", "watchdog.restart_backoff_max_s=3"]
    rt = Runtime(runtime_config(tmp_path, sets=sets), gpus=[None, None])
    try:
        w0, w1 = wait_until(lambda: _slots_ready(rt, 2), 120, what="both slots' workers")
        os.kill(w0["pid"], signal.SIGKILL)
        (crash,) = wait_until(lambda: rt.events("crash"), 30, what="the crash of w0")
        assert crash["worker"] == "w0" and "SIGKILL" in crash["reason"]
        ready, reasons = rt.ready()
        assert ready, reasons
        job = rt.submit()
        done = rt.wait(job.id, 60)
        assert done.status is JobStatus.SUCCEEDED and done.worker == "w1", done.error
        # It finished while w0 was still restarting: no ready event of w0's comes before it.
        assert done.finished_at is not None
        assert not [e for e in rt.events("ready") if e["worker"] == "w0" and e["time"] <= done.finished_at]
        back = wait_until(lambda: _slots_ready(rt, 2), 120, what="w0 back after its restart")
        assert back[0]["pid"] not in (w0["pid"], None) and back[0]["incarnation"] == 1
        assert (back[1]["pid"], back[1]["incarnation"]) == (w1["pid"], 0), "w1 never went down"
    finally:
        rt.close()


def _restarted(rt: Runtime) -> list[dict[str, Any]] | None:
    ws = _slots_ready(rt, 2)
    return ws if ws is not None and ws[0]["incarnation"] == 1 else None


@pytest.mark.timeout(1500)
def test_two_workers_compile_into_one_cache_at_once(tmp_path: Path) -> None:
    # The tiny pipeline compiled on the CPU (engine.compile_on_cpu) stands in for two GPUs' workers:
    # both warm up (and so compile) before Ready, into the one cache directory, at the same time.
    # 64x64 only (limits pin the warm-up's second size to the first): one static graph set.
    sets = ["engine.compile=true", "engine.compile_on_cpu=true", "engine.warmup=true",
            "watchdog.standby_worker=false", "watchdog.restart_backoff_s=0", "watchdog.restart_backoff_max_s=0"]
    rt = Runtime(runtime_config(tmp_path, sets=sets, limits={"max_side": 64}), gpus=[None, None], wait_ready=False)
    try:
        workers = wait_until(lambda: _slots_ready(rt, 2), 900, interval=0.5, what="both workers compiled and warm")
        for w in workers:
            counters = w["startup"]["compile_bundle"]["counters"]
            assert counters["graphs"] > 0 and counters["fxgraph_miss"] + counters["fxgraph_hit"] > 0, counters
        print("both at once:", [(w["startup"]["total_s"], w["startup"]["compile_bundle"]["counters"]) for w in workers])
        os.kill(workers[0]["pid"], signal.SIGKILL)
        after = wait_until(lambda: _restarted(rt), 600, interval=0.5, what="w0 restarted and warm")
        counters = after[0]["startup"]["compile_bundle"]["counters"]
        # What the two wrote at once is whole and found: the restarted worker lowers nothing.
        print("w0 again:", after[0]["startup"]["total_s"], counters)
        assert counters["fxgraph_miss"] == 0 and counters["fxgraph_hit"] > 0, counters
        assert after[1]["pid"] == workers[1]["pid"]
        done = rt.wait(rt.submit().id, 120)
        assert done.status is JobStatus.SUCCEEDED, done.error
    finally:
        rt.close()
