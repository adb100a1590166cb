"""A running job's link to the agent between steps: progress out, Steer in.

The worker's main loop is blocked in the engine while a job runs, so the
pipeline's step callback reads the pipe itself: a :class:`Steer` for this
job is applied (cancel, interrupt, previews from now on), anything else
(a Shutdown, a ClearCache) is kept for the main loop, in order. It
implements :class:`zitops.engine.base.StepHook`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from zitops.engine.base import STOP_CANCEL, STOP_INTERRUPT
from zitops.worker.protocol import (
    STEER_CANCEL,
    STEER_INTERRUPT,
    STEER_PREVIEW,
    FromWorker,
    Progress,
    Steer,
    ToWorker,
)

PREVIEW_SIDE = 256
"""A preview's longest side in pixels, whatever the image's size."""


def preview_png(image: Any) -> bytes:
    """A small PNG of ``image`` (fast compression: it is shown once and thrown away)."""
    small = image.convert("RGB")
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    out = io.BytesIO()
    small.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class JobSteering:
    """The StepHook of one job: sends Progress, applies Steers, keeps other messages in ``pending``."""

    def __init__(self, conn: Connection, send: Callable[[FromWorker], None], job_id: str,
                 pending: list[ToWorker]) -> None:
        self.conn = conn
        self.send = send
        self.job_id = job_id
        self.pending = pending
        self.previews = False
        self.action: str | None = None
        self._preview: Any = None  # this step's preview image, encoded off the step's path
        # Made at the first preview: from then on every Progress leaves through this one thread, in order,
        # so the PNG encoding (a few ms a preview) runs beside the next step instead of before it.
        self._encoder: ThreadPoolExecutor | None = None

    def _read(self) -> None:
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if not isinstance(msg, Steer):
                    self.pending.append(msg)
                elif msg.job_id == self.job_id:
                    if msg.action == STEER_PREVIEW:
                        self.previews = True
                    elif msg.action in (STEER_CANCEL, STEER_INTERRUPT) and self.action != STOP_CANCEL:
                        self.action = STOP_CANCEL if msg.action == STEER_CANCEL else STOP_INTERRUPT
        except (EOFError, OSError):
            self.action = STOP_CANCEL  # the agent is gone: nobody wants this job; the main loop exits

    def wants_preview(self, step: int) -> bool:
        """Whether a Steer asked for previews (the request's own wishes the engine checks itself)."""
        del step
        self._read()
        return self.previews

    def preview(self, step: int, image: Any) -> None:
        """Keep the step's preview for the Progress sent next."""
        del step
        self._preview = image
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zitops-preview")

    def __call__(self, step: int, total: int) -> None:
        """Send this step's Progress (with its preview, if one was made)."""
        image, self._preview = self._preview, None
        if self._encoder is None:
            self.send(Progress(job_id=self.job_id, step=step, steps=total))
            return
        self._encoder.submit(self._send_encoded, step, total, image)

    def _send_encoded(self, step: int, total: int, image: Any) -> None:
        png = preview_png(image) if image is not None else None
        self.send(Progress(job_id=self.job_id, step=step, steps=total, preview=png))

    def flush(self) -> None:
        """Wait until every Progress has been sent (before the job's Result or Failure)."""
        if self._encoder is not None:
            self._encoder.shutdown(wait=True)
            self._encoder = None

    def stop(self) -> str | None:
        """The Steer received so far: None, STOP_INTERRUPT or STOP_CANCEL."""
        self._read()
        return self.action
