"""The standby spare: a worker process that has done its imports and waits.

A fresh interpreter spends seconds importing torch, diffusers and
transformers before it can even start loading a model. The pool keeps one
spare per slot (:mod:`zitops.agent.workers.standby`) that has already paid that: it
sets the slot's device environment, imports the engine's modules, touches
no device (no CUDA context, no model, no GPU memory) and blocks on its pipe.
An ``Assign`` turns it into that slot's worker (:func:`worker_main`); a
``Shutdown``, or EOF when the agent is gone, ends it.

When the pool asks (``watchdog.standby_preload``, a model on disk, offload
"none", enough host memory: :mod:`zitops.agent.workers.standby` decides), the spare
also loads the pipeline onto the host after its imports (pageable memory, no
CUDA), so the start it serves only moves it to the device.

Started with the ``spawn`` context like a worker; torch-free at import.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from zitops.worker.lifeline import die_with_parent
from zitops.worker.preimport import device_environment, preimport
from zitops.worker.protocol import Assign, Shutdown, SparePreloaded, SpareReady

CUDA_TOUCHED_EXIT = 5
"""A spare's exit code when its imports initialised CUDA: the pool stops spares for that slot."""


def cuda_initialized() -> bool:
    """True when torch is imported and has initialised CUDA in this process (a spare must not)."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a torch without a usable cuda module cannot have initialised it
        return False


def preload_model(config_data: dict[str, Any]) -> tuple[Any, str | None]:
    """Load the configured pipeline onto the host: (a Preloaded or None, why it failed or None)."""
    from zitops.config import config_from_mapping
    from zitops.engine import phases

    try:
        config = config_from_mapping(config_data, "standby config")
        from zitops.engine.diffusers_engine import DiffusersEngine

        handle = DiffusersEngine.preload(config.profile.engine, config.model, config.paths.state_dir)
    except Exception as exc:  # the spare still serves as a plain pre-imported one
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        phases.take()  # the load's marks belong to the spare (preload_s), not to the start it serves
    return handle, None if handle is not None else "this engine setup does not load onto the host first"


def _send(conn: Connection, msg: Any) -> bool:
    try:
        conn.send(msg)
    except (BrokenPipeError, OSError):
        return False  # the agent is gone
    return True


def standby_main(conn: Connection, gpu: int | None, modules: list[str],
                 preload: dict[str, Any] | None = None, visible: str | None = None) -> None:
    """Entry point of a spare: imports (and, given ``preload`` config data, the model onto the host), then waits.

    It waits for Assign (become a worker) or Shutdown.
    """
    die_with_parent()  # first: a spare must never outlive the agent
    device_environment(gpu, visible)
    # As a worker: the agent decides when this process stops (see worker_main).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    imports_s = preimport(modules)
    if cuda_initialized():  # it could be holding GPU memory: never stay as a spare
        os._exit(CUDA_TOUCHED_EXIT)
    if not _send(conn, SpareReady(pid=os.getpid(), imports_s=round(imports_s, 3))):
        return
    handle: Any = None
    if preload is not None:
        handle, error = preload_model(preload)
        if cuda_initialized():  # the same guarantee after the load as after the imports
            os._exit(CUDA_TOUCHED_EXIT)
        seconds = handle.seconds if handle is not None else None
        if not _send(conn, SparePreloaded(pid=os.getpid(), seconds=seconds, error=error)):
            return
    waiting_since = time.time()
    try:
        msg = conn.recv()
    except (EOFError, OSError):
        return  # the agent is gone
    if isinstance(msg, Shutdown) or not isinstance(msg, Assign):
        return
    if msg.gpu != gpu:  # the pool assigns spares per slot; never run on another card's environment
        return
    from zitops.worker.process import worker_main

    # Paid before the assignment, so not part of this start: shown beside it.
    standby: dict[str, Any] = {"pid": os.getpid(), "imports_s": round(imports_s, 3),
                               "idle_s": round(max(0.0, time.time() - waiting_since), 3)}
    if handle is not None:
        standby["preload_s"] = handle.seconds
    worker_main(conn, msg.worker_id, msg.gpu, msg.incarnation, msg.config_data, spawned_at=msg.sent_at,
                standby=standby, preloaded=handle, gate=msg.gate, visible=visible)
