"""``run(config)``: the agent process and its composition root (store, dispatcher and pool, app, uvicorn).

Signal handlers only queue the signal (uvicorn style); the main loop handles
them one at a time: SIGTERM/SIGINT drain and exit 0, SIGHUP re-reads the log
tiers from the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from zitops.agent.dispatch.dispatcher import Dispatcher
from zitops.agent.http.auth import Tokens, check_bind_policy, read_tokens
from zitops.agent.http.http_server import raise_open_files, server_config
from zitops.agent.ops.job_traces import JobTraces
from zitops.agent.storage.store import open_store
from zitops.config import AgentConfig
from zitops.errors import ConfigError
from zitops.logbook.failures import FailureStore
from zitops.logbook.logs import configure_logging, get_logger, reload_levels
from zitops.tracing import make_tracer

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
UMASK = 0o027
"""Files the agent creates are 0640 and directories 0750, whatever the umask it was started with."""
DIR_MODE = 0o750

RESTART_EXIT = 75
"""Exit code (EX_TEMPFAIL) when every worker slot stopped at its flap limit: the supervisor restarts the agent."""

GRACEFUL_HTTP_S = 5.0
"""How long open HTTP requests get after the drain, before uvicorn cancels them."""

log = get_logger("zitops.agent")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the agent drains first, then stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No-op: the agent's main loop owns SIGTERM, SIGINT and SIGHUP."""
        yield


def bind(config: AgentConfig) -> socket.socket:
    """Bind the listening socket before any worker starts, with a clear error."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # Made by hand, not with socket.create_server: asyncio switches Nagle off
    # (TCP_NODELAY) on accepted connections only when the listening socket
    # names IPPROTO_TCP; without it every keep-alive response waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(config.server.backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
                          "pick a free port (port:) or stop what holds it") from None
    sock.set_inheritable(True)
    return sock


def make_dirs(config: AgentConfig) -> None:
    """Create the runtime directories 0750 (existing ones are the operator's and keep their mode)."""
    for path in config.paths.as_paths().values():
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for p in reversed(missing):
            try:
                p.mkdir(mode=DIR_MODE)
            except FileExistsError:
                continue
            except OSError as exc:
                raise ConfigError(f"paths: cannot create {p}: {exc.strerror or exc}") from None


def failure_store(config: AgentConfig) -> FailureStore:
    """The failure records, pruned by the profile's logging.failures_max_age_s and failures_max_bytes."""
    lg = config.profile.logging
    return FailureStore(Path(config.paths.state_dir), Path(config.paths.log_dir),
                        max_age_s=lg.failures_max_age_s, max_bytes=lg.failures_max_bytes)


def settle_parallel(config: AgentConfig) -> AgentConfig:
    """``engine.parallel``: a pool of GPU groups runs no standby or hot spares and no overlapped recycles.

    Each would hold a second group's worth of GPUs (or, for a standby
    spare, start a lone process where a group belongs); docs/parallel.md.
    """
    from zitops.agent.workers.groups import spares_off

    wd = config.profile.watchdog
    off = spares_off(config.profile.engine.parallel.degree, wd.standby_worker, wd.hot_spare, wd.overlap_recycle)
    if not off:
        return config
    log.info("engine.parallel: spares and overlapped recycles are off for groups", off=off)
    watchdog = wd.model_copy(update={"standby_worker": False, "hot_spare": False, "overlap_recycle": False})
    profile = config.profile.model_copy(update={"watchdog": watchdog})
    return config.model_copy(update={"profile": profile})


def settle_fp8(config: AgentConfig) -> AgentConfig:
    """``engine.fp8: auto`` decided once for this host's workers, from NVML's compute capabilities.

    The edge refuses LoRAs when the layers are fp8; deciding here, with the
    same rule the worker's engine applies (:func:`zitops.engine.precision.fp8.settle_auto`),
    keeps a LoRA request from passing the edge and failing in the worker.
    """
    from zitops.engine.precision.fp8 import settle_auto
    from zitops.gpu import probe_gpus, worker_devices

    engine = config.profile.engine
    if engine.fp8 != "auto":
        return config
    devices = worker_devices(config.gpus)
    found = {g.index: g.capability for g in probe_gpus()} if any(d is not None for d in devices) else {}
    capabilities = [None if d is None else found.get(d) for d in devices]
    fp8 = settle_auto(engine.fp8, capabilities)
    log.info("engine.fp8 auto settled for this host's workers", fp8=fp8, capabilities=capabilities)
    profile = config.profile.model_copy(update={"engine": engine.model_copy(update={"fp8": fp8})})
    return config.model_copy(update={"profile": profile})


def run(config: AgentConfig, config_path: str | Path | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; return the exit code (0 after a clean drain)."""
    os.umask(UMASK)  # before the first file (the logs); workers inherit it
    make_dirs(config)
    configure_logging(config.profile.logging, log_dir=Path(config.paths.log_dir), fmt=config.log_format,
                      process="agent")
    config = settle_parallel(settle_fp8(config))
    tokens = read_tokens(config)
    check_bind_policy(config, tokens.all)
    open_files = raise_open_files(config.server.max_open_files)
    if open_files <= config.server.limit_concurrency:
        log.warning("the open-file limit is at or below server.limit_concurrency; raise LimitNOFILE (or ulimit -n)",
                    open_files=open_files, limit_concurrency=config.server.limit_concurrency)
    sock = bind(config)
    return asyncio.run(_main(config, config_path, tokens, sock))


async def _main(config: AgentConfig, config_path: str | Path | None, tokens: Tokens,
                sock: socket.socket) -> int:
    """The composition root: the store, the dispatcher (which holds the worker pool), the app, the server.

    The dispatcher starts before the app is built: the workers' imports and
    warm-up are the longest path to Ready, and the app's own imports (FastAPI,
    pydantic, every route) run beside them instead of before the spawn.
    """
    signals = _queue_signals()  # first: a SIGTERM while the store connects is handled once started
    store = open_store(config)
    tracer = make_tracer(config.tracing.endpoint, "zitops-agent")  # NO_TRACER unless tracing is asked for
    dispatcher = Dispatcher(config, store=store, failures=failure_store(config), traces=JobTraces(tracer))
    try:
        await dispatcher.start()
        from zitops.agent.http.app import create_app

        app = create_app(config, dispatcher, tokens=tokens.all, admin_tokens=tokens.admins,
                         priorities=tokens.priorities, tracer=tracer)
        server = _Server(server_config(app, config.host, config.port, config.server, GRACEFUL_HTTP_S))
        return await _serve(config, config_path, dispatcher, server, sock, signals)
    finally:
        await dispatcher.close()
        tracer.shutdown()  # its owner: after the dispatcher closed, so the last jobs' spans go out


def _queue_signals() -> asyncio.Queue[int]:
    """Handlers that only queue SIGTERM, SIGINT and SIGHUP, for the main loop (uvicorn style)."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for handled in HANDLED:
        loop.add_signal_handler(handled, signals.put_nowait, handled)
    return signals


async def _serve(config: AgentConfig, config_path: str | Path | None, dispatcher: Dispatcher,
                 server: _Server, sock: socket.socket, signals: asyncio.Queue[int]) -> int:
    """Serve the started dispatcher, and handle the queued signals until a drain or a fatal pool; the exit code."""
    loop = asyncio.get_running_loop()
    fatal = asyncio.create_task(dispatcher.fatal.wait(), name="zitops-fatal")
    try:
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
        log.info("agent started", host=config.host, port=config.port, profile=config.profile.name,
                 workers=len(dispatcher.pool.slots), engine=config.engine.kind)
        while True:
            getter = asyncio.create_task(signals.get())
            done, _ = await asyncio.wait({getter, serving, fatal}, return_when=asyncio.FIRST_COMPLETED)
            if serving in done:
                getter.cancel()
                log.error("the HTTP server stopped on its own; stopping the agent")
                return 1
            if fatal in done:
                # Answering 503 forever would look alive to every supervisor:
                # exit instead, so systemd, Supervisor or the kubelet starts a fresh agent.
                getter.cancel()
                log.error("no worker can run jobs and restarts stopped; exiting for the supervisor to restart "
                          "the agent (queued jobs stay in the store)", reason=dispatcher.pool.fatal,
                          exit_code=RESTART_EXIT)
                await dispatcher.drain()
                server.should_exit = True
                await serving
                return RESTART_EXIT
            sig = getter.result()
            if sig == signal.SIGHUP:
                handle_sighup(dispatcher, config_path)
                reload_tokens_file(server.config.app, config)
                continue
            log.info("signal received: draining", signal=signal.Signals(sig).name)
            summary = await dispatcher.drain()
            server.should_exit = True
            await serving
            log.info("agent stopped", **summary)
            return 0
    finally:
        fatal.cancel()
        for handled in HANDLED:
            loop.remove_signal_handler(handled)


def reload_tokens_file(app: Any, config: AgentConfig) -> None:
    """Re-read auth.tokens_file and swap the tokens in force; log the counts, never a token."""
    from zitops.agent.http.app import reload_tokens

    if not config.auth.tokens_file:
        return
    try:
        tokens = read_tokens(config)
    except ConfigError as exc:  # a bad edit keeps the tokens in force
        log.error("SIGHUP: the tokens file was refused; keeping the current tokens", error=str(exc))
        return
    reload_tokens(app, tokens)
    log.warning("tokens reloaded", tokens=len(tokens.all), admins=len(tokens.admins))


def handle_sighup(dispatcher: Dispatcher, config_path: str | Path | None) -> None:
    """Re-read the log tiers from the config file and apply them."""
    if config_path is None:
        log.warning("SIGHUP ignored: the agent was not started from a config file")
        return
    try:
        levels = reload_levels(config_path)
    except Exception as exc:  # a bad edit must not take the agent down
        log.error("SIGHUP: could not reload log levels; keeping the current ones", error=str(exc))
        return
    log.warning("log levels reloaded", levels=levels)
