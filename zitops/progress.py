"""Progress of the CLI's long waits: a tqdm bar on a terminal, plain lines in a pipe.

A pipe (a log file, CI, ``| tee``) gets one line per phase and per state
change, and never a carriage return, so logs read top to bottom; ticks only
move a bar. The cores (``deploy --start``, ``model make-tiny``, ``bench``)
take a :class:`Progress` and know nothing of how it is shown. tqdm is
imported only when a terminal will see the bar.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Any


class Progress:
    """Phases, each with an optional count of steps, and a short state that may change."""

    def __init__(self, stream: IO[str] | None = None, *, tty: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.tty = self._stream.isatty() if tty is None else tty
        self._bar: Any = None
        self._phase: str | None = None
        self._total: int | None = None
        self._done = 0
        self._state: str | None = None
        self._t0 = 0.0

    def phase(self, name: str, total: int | None = None, unit: str = "step") -> None:
        """End the current phase and start ``name`` (``total`` steps, or open-ended)."""
        self.close()
        self._phase, self._total, self._done, self._state = name, total, 0, None
        self._t0 = time.monotonic()
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit=unit, file=self._stream, leave=True,
                             dynamic_ncols=True)
        else:
            self._line(f"{name} ..." if total is None else f"{name} ({total} {unit}s) ...")

    def advance(self, n: int = 1) -> None:
        """``n`` steps of the current phase are done (a pipe sees nothing until the phase ends)."""
        self._done += n
        if self._bar is not None:
            self._bar.update(n)

    def state(self, text: str) -> None:
        """What the wait is at now; a pipe gets a line only when it changes."""
        if text == self._state:
            return
        self._state = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        else:
            self._line(f"{self._phase}: {text}" if self._phase else text)

    def message(self, text: str) -> None:
        """A line of its own, printed above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            self._line(text)

    def close(self) -> None:
        """Finish the current phase: the bar stays on screen; a pipe gets one closing line."""
        if self._phase is None:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            count = f"{self._done}/{self._total}, " if self._total is not None else ""
            self._line(f"{self._phase}: done ({count}{time.monotonic() - self._t0:.1f} s)")
        self._phase = None

    def _line(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()  # a failed phase keeps its bar as it stood, not a "done" line
            self._bar = None
        elif exc_type is None:
            self.close()
        self._phase = None
