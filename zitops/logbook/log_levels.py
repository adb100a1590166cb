"""Log tiers: each logger's level, changed at runtime and followed by the workers.

Each logger's level comes from ``LogSettings.levels`` (``root`` is the root
logger). Levels change at runtime with :func:`set_levels` (the API's
``PUT /admin/log-levels``) or :func:`reload_levels` (the agent calls it on
SIGHUP with its config path). The agent writes its tiers to
``<log_dir>/.log-levels.json`` and each worker follows that file (polled every
``WATCH_INTERVAL_S``), so a change reaches the workers within about a second;
a worker that cannot use the file says so in its log and keeps its tiers.

torch, diffusers and transformers install their own stderr handler (and stop
propagation) when imported; :func:`adopt_library_loggers` takes it away so
their records reach zitops' handlers and tiers.

This module also holds the process-wide logging state (``_state``, under
``_lock``) that :mod:`zitops.logbook.logs` and :mod:`zitops.logbook.log_processors` share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zitops.config import load_config
from zitops.errors import ConfigError
from zitops.profile import LogSettings

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ACCESS_LOGGER = "uvicorn.access"
LEVELS_FILE = ".log-levels.json"
WATCH_INTERVAL_S = 1.0

# Libraries that install their own stderr handler and stop propagation when
# imported; we take it away so their records reach our handlers (and tiers).
SELF_CONFIGURING = ("transformers", "diffusers", "torch")

_LOGGER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$")
_own_log = logging.getLogger("zitops.logs")

_lock = threading.RLock()
_state: dict[str, Any] = {
    "configured": False,
    "levels": {},  # logger name -> level we set (what get_levels reports)
    "process": "zitops",
    "service_mode": False,
    "publish_to": None,  # the agent writes its tiers here for its workers
    "watcher": None,  # a worker's (thread, stop event) following that file
}


def levels_from(settings: LogSettings) -> dict[str, str]:
    """The tiers a profile's logging settings ask for, with the service and access-log defaults."""
    levels: dict[str, str] = dict(settings.levels)
    if _state["service_mode"]:
        levels.setdefault("py.warnings", "ERROR")
    # uvicorn logs each request at INFO; the root tier must not swallow them.
    if settings.access_log:
        levels.setdefault(ACCESS_LOGGER, "INFO")
    else:
        levels[ACCESS_LOGGER] = "CRITICAL"
    return levels


def _library_loggers() -> list[logging.Logger]:
    # torch gives each subsystem (torch._dynamo, torch._inductor...) its own
    # handler, so every existing logger under these names is checked.
    prefixes = tuple(f"{name}." for name in SELF_CONFIGURING)
    names = [n for n in list(logging.root.manager.loggerDict) if n in SELF_CONFIGURING or n.startswith(prefixes)]
    return [logging.getLogger(n) for n in sorted(set(names) | set(SELF_CONFIGURING))]


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
        for name in SELF_CONFIGURING:
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
            tuple(n for n in SELF_CONFIGURING if n in sys.modules),
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
                levels: dict[str, str] | None = _validate(json.loads(path.read_text("utf-8"))["levels"])
            except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
                levels = None  # a torn or foreign file: keep the current tiers, and say so
                _own_log.warning("log tiers file %s not applied (%s: %s); keeping the current tiers",
                                 path, type(exc).__name__, exc)
            with _lock:
                # Checked under the lock: a reconfigure that stopped this
                # watcher must not be undone by a file read just before.
                if stop.is_set():
                    return
                if levels is not None:
                    _apply_levels(levels, replace=True)
        stop.wait(WATCH_INTERVAL_S)




def start_following(path: Path) -> None:
    """Follow the agent's tiers file at ``path`` in a daemon thread (a worker's side)."""
    stop = threading.Event()
    thread = threading.Thread(target=_follow_levels, args=(path, stop), name="zitops-log-levels", daemon=True)
    _state["watcher"] = (thread, stop)
    thread.start()


def stop_following() -> None:
    """Stop following the tiers file, if this process does."""
    watcher = _state["watcher"]
    _state["watcher"] = None
    if watcher is not None:
        # No join: the caller holds the lock the watcher may be waiting for;
        # it sees the event under that lock and exits.
        watcher[1].set()


def reset_levels(settings: LogSettings, *, publish_to: Path | None) -> None:
    """Replace every tier with the settings' (and publish them to ``publish_to``, the agent's file)."""
    with _lock:
        _state["publish_to"] = publish_to
        _apply_levels(_validate(levels_from(settings)), replace=True)


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
    return set_levels(levels_from(load_config(config_path).profile.logging), replace=True)
