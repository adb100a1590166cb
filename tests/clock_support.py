"""A process whose wall clock is off, or steps, while its monotonic clock runs true: an LD_PRELOAD shim.

:class:`WallClock` compiles a small C library (``cc``, once per test session) that
wraps ``clock_gettime``: ``CLOCK_REALTIME`` (what ``time.time()`` and
``datetime.now()`` read) gets the offset, in seconds, written in a file; every
other clock, ``CLOCK_MONOTONIC`` included, is the kernel's. The test changes
the file while the process runs, so its wall clock steps (NTP stepping a
clock back, a VM resumed) without touching the machine's clock. libfaketime
(Debian 0.9.10) can't serve here: with its monotonic clock left alone,
Python's ``time.sleep`` fails with EINVAL, and with it faked, timed waits hang.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int (*clock_fn)(clockid_t, struct timespec *);
static clock_fn real_clock;
static long long offset_ns;
static long long read_at_ns = -1;

static long long ns(const struct timespec *t) { return (long long)t->tv_sec * 1000000000LL + t->tv_nsec; }

/* The offset file is read again at most every 20 ms (of the true monotonic clock). */
static long long offset(void) {
    struct timespec now;
    real_clock(CLOCK_MONOTONIC, &now);
    if (read_at_ns >= 0 && ns(&now) - read_at_ns < 20000000LL) return offset_ns;
    read_at_ns = ns(&now);
    const char *path = getenv("ZITOPS_TEST_WALL_OFFSET_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    double seconds = 0;
    if (f) {
        if (fscanf(f, "%lf", &seconds) != 1) seconds = 0;
        fclose(f);
    }
    offset_ns = (long long)(seconds * 1e9);
    return offset_ns;
}

int clock_gettime(clockid_t clock, struct timespec *tp) {
    if (!real_clock) real_clock = (clock_fn)dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock(clock, tp);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long t = ns(tp) + offset();
        tp->tv_sec = t / 1000000000LL;
        tp->tv_nsec = t % 1000000000LL;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    if (out) *out = t.tv_sec;
    return t.tv_sec;
}
"""


@functools.cache
def _library() -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) for the wall-clock shim: apt-get install -y gcc", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="zitops-wallclock-"))
    (root / "wallclock.c").write_text(_SOURCE)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(root / "libwallclock.so"), str(root / "wallclock.c"),
                    "-ldl"], check=True, capture_output=True, timeout=60)
    return root / "libwallclock.so"


class WallClock:
    """The wall-clock offset of the processes started with :attr:`env`; :meth:`set` steps it."""

    def __init__(self, directory: Path, offset_s: float = 0.0) -> None:
        self.file = directory / "wall-offset"
        self.set(offset_s)
        self.env = {"LD_PRELOAD": str(_library()), "ZITOPS_TEST_WALL_OFFSET_FILE": str(self.file)}

    def set(self, offset_s: float) -> None:
        """From now on the processes' wall clock reads true time plus ``offset_s`` (within 20 ms)."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s}\n")
        tmp.replace(self.file)
