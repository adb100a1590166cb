"""Tie a spawned child's life to the agent's: PR_SET_PDEATHSIG (Linux), nothing elsewhere.

Workers and standby spares hold GPU memory or gigabytes of host memory. An
agent killed with SIGKILL runs no cleanup, so without this its children
would live on (orphaned, holding the GPU) until someone finds them.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent thread dies."""

ORPHANED_EXIT = 6
"""Exit code of a child whose agent died before it could arm the signal."""


def die_with_parent() -> bool:
    """SIGKILL this process when the process that spawned it dies; True when armed (Linux only).

    Call first thing in a spawned child. The kernel sends the signal when the
    parent *thread* that forked us exits: the agent spawns only from its
    event-loop thread, which lives as long as the agent.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # no libc prctl (an unusual libc): live without it
        return False
    # prctl(2): the parent may have died before the call, and then no signal
    # will ever come; we have been re-parented, so leave now.
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(ORPHANED_EXIT)
    return True
