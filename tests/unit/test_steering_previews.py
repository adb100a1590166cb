"""A job's step hook: previews are encoded on a thread, yet every Progress leaves in step order before flush ends."""

from __future__ import annotations

import io
from multiprocessing import Pipe
from typing import Any

from PIL import Image

from zitops.worker.protocol import Progress
from zitops.worker.steering import JobSteering


def test_progress_keeps_step_order_with_previews_encoded_off_the_step() -> None:
    conn, other = Pipe()
    sent: list[Any] = []
    steering = JobSteering(conn, sent.append, "job-1", [])
    steering(1, 5)
    assert [m.step for m in sent] == [1], "without previews a step's Progress is sent at once"
    for step in range(2, 6):
        if step in (2, 4):
            steering.preview(step, Image.new("RGB", (512, 300), (step * 40, 0, 0)))
        steering(step, 5)
    steering.flush()
    assert all(isinstance(m, Progress) and m.job_id == "job-1" for m in sent)
    assert [m.step for m in sent] == [1, 2, 3, 4, 5]
    previews = {m.step: m.preview for m in sent if m.preview is not None}
    assert set(previews) == {2, 4}
    assert all(png.startswith(b"\x89PNG") for png in previews.values())
    with Image.open(io.BytesIO(previews[2])) as im:
        assert max(im.size) == 256  # PREVIEW_SIDE
    steering.flush()  # a second flush is harmless
    other.close()
