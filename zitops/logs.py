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
- ``failures.jsonl``: written by :mod:`zitops.failures`, not here.

Every JSON line has ``timestamp`` (ISO 8601, UTC), ``level``, ``event``,
``logger``, ``process``, ``pid`` and whatever context is bound with
:func:`job_context` / ``structlog.contextvars.bind_contextvars`` (``job_id``,
``request_id``, ``worker_id``). Secrets are redacted before rendering.

Tiers: each logger's level comes from ``LogSettings.levels`` (``root`` is the
root logger). Levels change at runtime with :func:`set_levels` (the API's
``PUT /admin/log-levels``) or :func:`reload_levels` (the agent calls it on
SIGHUP with its config path). The agent writes its tiers to
``<log_dir>/.log-levels.json`` and each worker follows that file (polled every
``WATCH_INTERVAL_S``), so a change reaches the workers within about a second.

For uvicorn, start it with ``log_config=None`` and ``log_level=None`` so it
leaves this configuration alone. torch, diffusers and
transformers install their own stderr handler (and stop propagation) when
imported; the first zitops log line after such an import adopts them
(:func:`adopt_library_loggers`), and a worker may also call it explicitly
right after loading the engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal

import structlog

from zitops.config import load_config
from zitops.errors import ConfigError
from zitops.profile import LogSettings

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ACCESS_LOGGER = "uvicorn.access"
AGENT_LOG = "zitops.log"
ACCESS_LOG = "access.log"
LEVELS_FILE = ".log-levels.json"
WATCH_INTERVAL_S = 1.0
REDACTED = "[REDACTED]"

# Libraries that install their own stderr handler and stop propagation when
# imported; we take it away so their records reach our handlers (and tiers).
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

_LOGGER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$")
_SECRET_KEY = re.compile(
    r"^(authorization|proxy[-_]authorization|x[-_]api[-_]key|api[-_]?key|token|access[-_]token|"
    r"refresh[-_]token|bearer|password|passwd|secret|cookie|set[-_]cookie|.*[-_]token|.*[-_]secret)$",
    re.IGNORECASE,
)
_SECRET_TEXT = (
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 " + REDACTED),
    (
        re.compile(r"(?i)\b(authorization|token|access_token|api_key|apikey|password|secret)=([^&\s\"']+)"),
        r"\1=" + REDACTED,
    ),
)

_lock = threading.RLock()
_state: dict[str, Any] = {
    "configured": False,
    "levels": {},  # logger name -> level we set (what get_levels reports)
    "process": "zitops",
    "service_mode": False,
    "publish_to": None,  # the agent writes its tiers here for its workers
    "watcher": None,  # a worker's (thread, stop event) following that file
}


# ---------------------------------------------------------------- processors


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace tokens, Authorization values and ``Bearer xxx`` text with a marker."""
    for key in list(event_dict):
        if key.startswith("_"):
            continue
        event_dict[key] = _redact_value(key, event_dict[key], depth=0)
    return event_dict


def _redact_value(key: str, value: Any, depth: int) -> Any:
    if _SECRET_KEY.match(key) and value is not None and value != "":
        return REDACTED
    if isinstance(value, str):
        return _redact_text(value)
    if depth < 3 and isinstance(value, Mapping):
        return {k: _redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_redact_value("", v, depth + 1) for v in value]
    return value


def _redact_text(text: str) -> str:
    for pattern, repl in _SECRET_TEXT:
        text = pattern.sub(repl, text)
    return text


def _add_process(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("process", _state["process"])
    event_dict.setdefault("pid", os.getpid())
    return event_dict


def _stdlib_fields(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Turn uvicorn's positional access-log args into fields; drop its colour copy."""
    event_dict.pop("color_message", None)
    args = event_dict.pop("positional_args", None)
    record = event_dict.get("_record")
    if record is not None and record.name == ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
        client, method, path, http_version, status = args
        event_dict.update(
            event="http_request",
            client=client,
            method=method,
            path=_redact_text(str(path)),
            http_version=http_version,
            status=status,
        )
    return event_dict


_HEAD = ("timestamp", "level", "logger", "event")


def _adopt_new_libraries(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Adopt torch/diffusers/transformers loggers once they exist (a worker imports them late)."""
    # Cheap in steady state: three dict lookups and a len(); adoption runs only
    # when a library or a logger appeared since the last time.
    key = (tuple(n for n in _SELF_CONFIGURING if n in sys.modules), len(logging.root.manager.loggerDict))
    if key != _state.get("adopted_key"):
        adopt_library_loggers()
    return event_dict


def _head_first(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Put the fields a reader scans for first, so raw lines stay readable."""
    head = {k: event_dict.pop(k) for k in _HEAD if k in event_dict}
    head.update(event_dict)
    return head


def _shared_chain() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_process,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.stdlib.ExtraAdder(),
        _stdlib_fields,
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
    ]


def _json_formatter(foreign: list[Any]) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,  # a traceback can quote a header
            _head_first,
            structlog.processors.JSONRenderer(ensure_ascii=False, default=str),
        ],
    )


def _console_formatter(foreign: list[Any], colors: bool) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=colors),
        ],
    )


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


def _rotating(path: Path, settings: LogSettings) -> logging.Handler:
    # delay=True: a process that never logs leaves no empty file behind.
    return logging.handlers.RotatingFileHandler(
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

        foreign = _shared_chain()
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
            stream.setFormatter(_console_formatter(foreign, colors=_stderr_is_tty()))
        else:
            stream.setFormatter(_json_formatter(foreign))
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
            main_file.setFormatter(_json_formatter(foreign))
            root.addHandler(main_file)

        # The access log never mixes with the main log; without a file (or with
        # access_log off) uvicorn sees no handler and skips formatting entirely.
        access.propagate = False
        if log_dir is not None and settings.access_log:
            access_file = _tag(_rotating(log_dir / ACCESS_LOG, settings))
            access_file.setFormatter(_json_formatter(foreign))
            access.addHandler(access_file)

        structlog.configure(
            processors=[
                _adopt_new_libraries,
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
        _stop_watcher()
        is_agent = process == "agent"
        _state["publish_to"] = Path(log_dir) / LEVELS_FILE if log_dir is not None and is_agent else None
        _apply_levels(_validate(_levels_from(settings)), replace=True)
        adopt_library_loggers()
        if log_dir is not None and not is_agent:
            _start_watcher(Path(log_dir) / LEVELS_FILE)
        _state["configured"] = True


def _levels_from(settings: LogSettings) -> dict[str, str]:
    levels: dict[str, str] = dict(settings.levels)
    if _state["service_mode"]:
        levels.setdefault("py.warnings", "ERROR")
    # uvicorn logs each request at INFO; the root tier must not swallow them.
    if settings.access_log:
        levels.setdefault(ACCESS_LOGGER, "INFO")
    else:
        levels[ACCESS_LOGGER] = "CRITICAL"
    return levels


def _stderr_is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def _library_loggers() -> list[logging.Logger]:
    # torch gives each subsystem (torch._dynamo, torch._inductor...) its own
    # handler, so every existing logger under these names is checked.
    prefixes = tuple(f"{name}." for name in _SELF_CONFIGURING)
    names = [n for n in list(logging.root.manager.loggerDict) if n in _SELF_CONFIGURING or n.startswith(prefixes)]
    return [logging.getLogger(n) for n in sorted(set(names) | set(_SELF_CONFIGURING))]


def _is_console_handler(handler: logging.Handler) -> bool:
    # Only the libraries' console handlers go; a file or trace handler someone
    # added on purpose (e.g. TORCH_TRACE) stays.
    return (
        not getattr(handler, "_zitops", False)
        and isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    )


def adopt_library_loggers() -> None:
    """Undo the stderr handler diffusers/transformers/torch install on import; reapply tiers."""
    with _lock:
        for name in _SELF_CONFIGURING:
            module = sys.modules.get(f"{name}.utils.logging")
            if module is not None:
                # Their own switches, so their global "already configured"
                # flag stays consistent and they do not add the handler again.
                with contextlib.suppress(Exception):
                    module.disable_default_handler()
                    module.enable_propagation()
        for lib in _library_loggers():
            for handler in list(lib.handlers):
                if _is_console_handler(handler):
                    lib.removeHandler(handler)
            if not lib.handlers:
                lib.propagate = True
        if _state["service_mode"]:
            module = sys.modules.get("transformers.utils.logging")
            if module is not None:
                with contextlib.suppress(Exception):
                    module.disable_progress_bar()
            module = sys.modules.get("diffusers.utils.logging")
            if module is not None:
                with contextlib.suppress(Exception):
                    module.disable_progress_bar()
        # Their import reset their level from *_VERBOSITY; ours wins.
        for name, level in _state["levels"].items():
            _logger(name).setLevel(level)
        _state["adopted_key"] = (
            tuple(n for n in _SELF_CONFIGURING if n in sys.modules),
            len(logging.root.manager.loggerDict),
        )


# ---------------------------------------------------------------- levels


def _logger(name: str) -> logging.Logger:
    return logging.getLogger() if name == "root" else logging.getLogger(name)


def _validate(levels: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(levels, Mapping):
        raise ConfigError("log levels must be a mapping of logger name to level")
    out: dict[str, str] = {}
    for name, level in levels.items():
        if not isinstance(name, str) or not _LOGGER_NAME.match(name):
            raise ConfigError(
                f"logger name {name!r} is not allowed: use 'root' or a dotted name like zitops.agent"
            )
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise ConfigError(f"level {level!r} for logger {name!r} is not allowed: use one of {', '.join(LEVELS)}")
        out[name] = level.upper()
    return out


def _apply_levels(levels: dict[str, str], *, replace: bool) -> None:
    if replace:
        for name in _state["levels"]:
            if name not in levels:
                # Back to inheriting; "root" cannot inherit, so it is always in levels.
                _logger(name).setLevel(logging.NOTSET)
        _state["levels"] = {}
        if "root" not in levels:
            levels = {"root": "WARNING", **levels}
    for name, level in levels.items():
        _logger(name).setLevel(level)
        _state["levels"][name] = level
    _publish_levels()


# Workers follow the agent's runtime tier changes (API or SIGHUP) through a
# small file in the log directory: no protocol message, and a worker that
# starts later picks up the current tiers at once.


def _publish_levels() -> None:
    path = _state["publish_to"]
    if path is None:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"levels": _state["levels"]}), "utf-8")
        os.replace(tmp, path)  # atomic: a worker never reads half a file
    except OSError:
        pass  # the workers keep their tiers; the agent's own change still applies


def _follow_levels(path: Path, stop: threading.Event) -> None:
    seen: tuple[int, int] | None = None
    while not stop.is_set():
        try:
            st = path.stat()
            key: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key is not None and key != seen:
            seen = key
            try:
                levels = _validate(json.loads(path.read_text("utf-8"))["levels"])
            except (OSError, ValueError, KeyError, TypeError, ConfigError):
                levels = None  # a torn or foreign file: keep the current tiers
            with _lock:
                # Checked under the lock: a reconfigure that stopped this
                # watcher must not be undone by a file read just before.
                if stop.is_set():
                    return
                if levels is not None:
                    _apply_levels(levels, replace=True)
        stop.wait(WATCH_INTERVAL_S)


def _start_watcher(path: Path) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=_follow_levels, args=(path, stop), name="zitops-log-levels", daemon=True)
    _state["watcher"] = (thread, stop)
    thread.start()


def _stop_watcher() -> None:
    watcher = _state["watcher"]
    _state["watcher"] = None
    if watcher is not None:
        # No join: the caller holds the lock the watcher may be waiting for;
        # it sees the event under that lock and exits.
        watcher[1].set()


def set_levels(levels: dict[str, str], *, replace: bool = False) -> dict[str, str]:
    """Change logger tiers at runtime (validated as a whole first); return the effective tiers."""
    checked = _validate(levels)
    with _lock:
        _apply_levels(checked, replace=replace)
        return get_levels()


def get_levels() -> dict[str, str]:
    """Every tier that was set, as each logger's effective level name."""
    with _lock:
        names = sorted(_state["levels"], key=lambda n: (n != "root", n))
        return {name: logging.getLevelName(_logger(name).getEffectiveLevel()) for name in names}


def reload_levels(config_path: str | Path) -> dict[str, str]:
    """Re-read the agent config and reset every tier to it (the SIGHUP action)."""
    return set_levels(_levels_from(load_config(config_path).profile.logging), replace=True)


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
