"""One logging path for the agent and its workers: structlog over stdlib logging.

Everything goes through stdlib ``logging`` handlers whose formatter is
structlog's :class:`~structlog.stdlib.ProcessorFormatter`, so lines from
zitops (structlog) and from uvicorn, apscheduler, diffusers, transformers,
torch and ``warnings`` (stdlib) get the same fields and the same renderer.

Files (under the deployment's log directory, rotated by size with
``LogSettings.backups`` old files kept):

- ``zitops.log``: the agent process (``process="agent"``), JSON lines.
- ``<process>.log``: any other process, e.g. ``worker-0.log``. Each worker
  writes its own file because :class:`logging.handlers.RotatingFileHandler`
  is not safe when several processes rotate the same file. Lines carry
  ``process`` and ``pid``, so the files merge cleanly by ``timestamp``.
- ``access.log``: uvicorn's access log, JSON lines, unless
  ``LogSettings.access_log`` is false (then nothing is formatted at all).
- ``failures.jsonl``: written by :mod:`zitops.logbook.failures`, not here.

Every JSON line has ``timestamp`` (ISO 8601, UTC), ``level``, ``event``,
``logger``, ``process``, ``pid`` and whatever context is bound with
:func:`job_context` / ``structlog.contextvars.bind_contextvars`` (``job_id``,
``request_id``, ``worker_id``). Secrets are redacted before rendering.

Tiers (each logger's level, changed at runtime and followed by the workers)
live in :mod:`zitops.logbook.log_levels`; the processors and renderers in
:mod:`zitops.logbook.log_processors`. This module configures the handlers and is the
public face: every name callers used from it is still here.

For uvicorn, start it with ``log_config=None`` and ``log_level=None`` so it
leaves this configuration alone. torch, diffusers and
transformers install their own stderr handler (and stop propagation) when
imported; the first zitops log line after such an import adopts them
(:func:`adopt_library_loggers`), and a worker may also call it explicitly
right after loading the engine.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import structlog

from zitops.errors import ConfigError
from zitops.logbook.log_levels import (
    ACCESS_LOGGER,
    LEVELS,
    LEVELS_FILE,
    WATCH_INTERVAL_S,
    _lock,
    _state,
    adopt_library_loggers,
    get_levels,
    reload_levels,
    reset_levels,
    set_levels,
    start_following,
    stop_following,
)
from zitops.logbook.log_processors import (
    REDACTED,
    adopt_new_libraries,
    console_formatter,
    json_formatter,
    redact_secrets,
    shared_chain,
)
from zitops.profile import LogSettings

__all__ = [
    "ACCESS_LOG", "ACCESS_LOGGER", "AGENT_LOG", "LEVELS", "LEVELS_FILE", "REDACTED", "WATCH_INTERVAL_S",
    "adopt_library_loggers", "configure_logging", "get_levels", "get_logger", "job_context", "log_file_name",
    "log_files", "redact_secrets", "reload_levels", "set_levels",
]

AGENT_LOG = "zitops.log"
ACCESS_LOG = "access.log"

_SELF_CONFIGURING = ("transformers", "diffusers", "torch")

# Environment that keeps libraries quiet in service mode. setdefault, so an
# operator who exports one of these on purpose still wins.
_SERVICE_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# ---------------------------------------------------------------- configure


def _resolve_format(fmt: str) -> Literal["json", "console"]:
    if fmt == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        return "console" if isatty is not None and isatty() else "json"
    if fmt in ("json", "console"):
        return fmt  # type: ignore[return-value]
    raise ConfigError(f"log format {fmt!r} is not allowed: use auto, json or console")


def log_file_name(process: str) -> str:
    """The file a process writes under the log directory."""
    return AGENT_LOG if process == "agent" else f"{_safe_name(process)}.log"


def _safe_name(process: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", process).strip(".") or "process"
    return name[:80]


class FormatOnceHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that formats each record once.

    The stdlib's ``shouldRollover`` formats the record to learn its length,
    then ``emit`` formats it again: every line ran the structlog formatter
    (redaction, JSON) twice, on the agent's event loop. Both calls happen
    inside one ``handle`` (under the handler's lock), so the second reuses the first.
    """

    _last: tuple[logging.LogRecord, str] | None = None

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, formatted once per emit."""
        last = self._last
        if last is not None and last[0] is record:
            return last[1]
        line = super().format(record)
        self._last = (record, line)
        return line

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record (rolling over first if it would pass max_bytes); forget the cached line."""
        try:
            super().emit(record)
        finally:
            self._last = None


def _rotating(path: Path, settings: LogSettings) -> logging.Handler:
    # delay=True: a process that never logs leaves no empty file behind.
    return FormatOnceHandler(
        path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8", delay=True
    )


def _remove_our_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, "_zitops", False):
            logger.removeHandler(handler)
            with contextlib.suppress(Exception):
                handler.close()


def _tag(handler: logging.Handler) -> logging.Handler:
    handler._zitops = True  # type: ignore[attr-defined]
    return handler


def configure_logging(
    settings: LogSettings,
    *,
    log_dir: Path | None,
    fmt: Literal["auto", "json", "console"] = "auto",
    process: str = "agent",
    service_mode: bool = True,
) -> None:
    """Route structlog and stdlib logging through one set of handlers; safe to call again."""
    renderer = _resolve_format(fmt)
    with _lock:
        _state["process"] = process
        _state["service_mode"] = service_mode
        if service_mode:
            for key, value in _SERVICE_ENV.items():
                os.environ.setdefault(key, value)

        foreign = shared_chain()
        root = logging.getLogger()
        _remove_our_handlers(root)
        access = logging.getLogger(ACCESS_LOGGER)
        # The access logger is ours alone: a handler left by uvicorn's default
        # dictConfig would print unredacted request lines and make uvicorn
        # format them even with the access log off.
        for handler in list(access.handlers):
            access.removeHandler(handler)
            if getattr(handler, "_zitops", False):
                with contextlib.suppress(Exception):
                    handler.close()

        stream = _tag(logging.StreamHandler(sys.stderr))
        if renderer == "console":
            stream.setFormatter(console_formatter(foreign, colors=_stderr_is_tty()))
        else:
            stream.setFormatter(json_formatter(foreign))
        if log_dir is not None and service_mode:
            # The file has the full record at the configured tiers; the journal
            # (stderr) only needs what an operator must look at.
            stream.setLevel(logging.WARNING)
        root.addHandler(stream)

        if log_dir is not None:
            log_dir = Path(log_dir)
            try:
                log_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{log_dir}: cannot create the log directory: {exc.strerror}") from None
            main_file = _tag(_rotating(log_dir / log_file_name(process), settings))
            main_file.setFormatter(json_formatter(foreign))
            root.addHandler(main_file)

        # The access log never mixes with the main log; without a file (or with
        # access_log off) uvicorn sees no handler and skips formatting entirely.
        access.propagate = False
        if log_dir is not None and settings.access_log:
            access_file = _tag(_rotating(log_dir / ACCESS_LOG, settings))
            access_file.setFormatter(json_formatter(foreign))
            access.addHandler(access_file)

        structlog.configure(
            processors=[
                adopt_new_libraries,
                structlog.stdlib.filter_by_level,
                *foreign,
                structlog.stdlib.PositionalArgumentsFormatter(),
                structlog.processors.UnicodeDecoder(),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            context_class=dict,
            # Loggers stay uncached so a second configure_logging applies to
            # loggers that modules created at import time.
            cache_logger_on_first_use=False,
        )

        logging.captureWarnings(True)
        stop_following()
        is_agent = process == "agent"
        reset_levels(settings, publish_to=Path(log_dir) / LEVELS_FILE if log_dir is not None and is_agent else None)
        adopt_library_loggers()
        if log_dir is not None and not is_agent:
            start_following(Path(log_dir) / LEVELS_FILE)
        _state["configured"] = True


def _stderr_is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


# ---------------------------------------------------------------- use


def get_logger(name: str = "zitops") -> structlog.stdlib.BoundLogger:
    """A structlog logger backed by the stdlib logger ``name`` (so its tier applies)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


@contextlib.contextmanager
def job_context(
    job_id: str | None = None,
    worker_id: str | None = None,
    request_id: str | None = None,
    **extra: Any,
) -> Iterator[None]:
    """Bind job/worker/request ids to every line logged inside the block (this task/thread)."""
    fields = {"job_id": job_id, "worker_id": worker_id, "request_id": request_id, **extra}
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in fields.items() if v is not None}):
        yield


def log_files(log_dir: Path) -> list[Path]:
    """Every zitops log file (current and rotated) under ``log_dir``, sorted."""
    return sorted(p for p in Path(log_dir).glob("*.log*") if p.is_file() and not p.name.startswith("."))
