"""Failure records are pruned by age and by bytes, oldest first, in both files."""

from __future__ import annotations

import json
from pathlib import Path

from zitops.logbook.failures import FailureStore


def _record(store: FailureStore, n: int, message: str = "boom") -> None:
    store.record(job_id=f"job{n}", profile="designer", prompt="a cat", params={}, exc_type="EngineError",
                 message=message, traceback="tb " * 50, worker_id="w0", vram=None, action="fail")


def _jsonl_ids(store: FailureStore) -> list[str]:
    return [json.loads(line)["job_id"] for line in store.jsonl_path.read_text().splitlines()]


def test_prune_by_age_drops_old_records_from_both_files(tmp_path: Path) -> None:
    store = FailureStore(tmp_path / "state", tmp_path / "logs", max_age_s=3600)
    for n in range(3):
        _record(store, n)
    assert store.prune(now=_newest(store) + 10) == 0  # all young
    assert store.prune(now=_newest(store) + 7200) == 3  # all two hours old
    assert _jsonl_ids(store) == []
    assert store.list(limit=10) == []


def test_prune_by_size_keeps_the_newest_under_the_cap(tmp_path: Path) -> None:
    cap = 64 * 1024
    store = FailureStore(tmp_path / "state", tmp_path / "logs", max_bytes=cap)
    for n in range(200):  # each record is ~1 KB: well past the cap, pruned as it goes
        _record(store, n, message="x" * 600)
    assert store.jsonl_path.stat().st_size <= cap
    assert store.db_path.stat().st_size <= cap * 2  # pages and the index on top of the rows
    ids = _jsonl_ids(store)
    assert ids[-1] == "job199" and "job0" not in ids
    newest = [r.job_id for r in store.list(limit=1000)]
    assert newest[0] == "job199" and "job0" not in newest


def test_no_limits_means_no_pruning(tmp_path: Path) -> None:
    store = FailureStore(tmp_path / "state", tmp_path / "logs")
    for n in range(5):
        _record(store, n)
    assert store.prune(now=_newest(store) + 10**9) == 0
    assert len(_jsonl_ids(store)) == 5


def _newest(store: FailureStore) -> float:
    return max(r.ts for r in store.list(limit=1000))
