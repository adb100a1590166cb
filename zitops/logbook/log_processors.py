"""structlog processors and formatters: the fields and renderers of every zitops log line.

Every JSON line has ``timestamp`` (ISO 8601, UTC), ``level``, ``event``,
``logger``, ``process``, ``pid`` and whatever context is bound. Secrets
(tokens, Authorization values, ``Bearer xxx`` text) are redacted before
rendering. Processors are plain callables, as structlog's are.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from zitops.logbook.log_levels import ACCESS_LOGGER, SELF_CONFIGURING, _state, adopt_library_loggers

REDACTED = "[REDACTED]"
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
        return redact_text(value)
    if depth < 3 and isinstance(value, Mapping):
        return {k: _redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_redact_value("", v, depth + 1) for v in value]
    return value


def redact_text(text: str) -> str:
    # Every pattern needs "bearer" or "=" in the text: most values (ids, paths,
    # messages) have neither, and skip the regexes, which ran on every string
    # of every line three times (the chain, then each handler's formatter).
    if "=" not in text and "bearer" not in text.lower():
        return text
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
            path=redact_text(str(path)),
            http_version=http_version,
            status=status,
        )
    return event_dict


_HEAD = ("timestamp", "level", "logger", "event")


def adopt_new_libraries(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Adopt torch/diffusers/transformers loggers once they exist (a worker imports them late)."""
    # Cheap in steady state: three dict lookups and a len(); adoption runs only
    # when a library or a logger appeared since the last time.
    key = (tuple(n for n in SELF_CONFIGURING if n in sys.modules), len(logging.root.manager.loggerDict))
    if key != _state.get("adopted_key"):
        adopt_library_loggers()
    return event_dict


def _head_first(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Put the fields a reader scans for first, so raw lines stay readable."""
    head = {k: event_dict.pop(k) for k in _HEAD if k in event_dict}
    head.update(event_dict)
    return head


def shared_chain() -> list[Any]:
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


def json_formatter(foreign: list[Any]) -> structlog.stdlib.ProcessorFormatter:
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


def console_formatter(foreign: list[Any], colors: bool) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=colors),
        ],
    )
