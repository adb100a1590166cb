"""Start-up phase marks: how long the engine's setup spent where. torch-free.

The worker reports these in its Ready message (``zitops.worker.process``).
Setup code wraps a step in ``with phase("load"):``; the worker takes the
marks once the engine is set up. One engine per worker process, so a
module-level record is enough.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

_marks: dict[str, float] = {}


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent in the block to the mark ``name`` (seconds, summed over repeats)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _marks[name] = _marks.get(name, 0.0) + time.perf_counter() - started


def take() -> dict[str, float]:
    """The marks so far (seconds), and forget them."""
    marks = dict(_marks)
    _marks.clear()
    return marks
