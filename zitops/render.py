"""Rendering: one Jinja environment and the per-format quoting filters.

Every value that reaches a rendered file goes through a filter named for the
format that will read it (``shell``, ``systemd_exe``, ``systemd_arg``,
``systemd_path``, ``systemd_value``, ``systemd_env``, ``ini``, ``yaml``, ``to_yaml``). Each
filter takes the field's name, so a value that cannot be represented is
refused with a :class:`RenderError` that says which field, before anything is
written. Templates never build a value by concatenating user input.

The templates live in the repository's top-level ``templates/``; the package
reaches them through the ``zitops/_templates`` link, which the wheel turns
into a real directory.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from zitops.errors import RenderError

# configparser (and so supervisor) starts an inline comment at ';' or '#'
# after whitespace, and strips whitespace around a value.
_INI_COMMENT = re.compile(r"\s[;#]")


def templates_dir() -> Path:
    """The directory holding the Jinja templates (installed wheel or checkout)."""
    return Path(str(resources.files("zitops").joinpath("_templates")))


def check_value(value: Any, field: str, *, multiline: bool = False) -> str:
    """Return ``value`` as text, or refuse a character no target format can hold safely.

    Refused: NUL, newlines (unless ``multiline``), every other control or
    format character (including bidi overrides) and lone surrogates; that is,
    anything ``str.isprintable`` rejects.
    """
    text = value if isinstance(value, str) else str(value)
    for ch in text:
        if ch == "\n" and multiline:
            continue
        if not ch.isprintable():
            what = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL"}.get(
                ch, f"the non-printable character U+{ord(ch):04X}"
            )
            raise RenderError(f"{field}: value contains {what}, which cannot be written safely")
    return text


def shell(value: Any, field: str) -> str:
    """One POSIX shell word."""
    return shlex.quote(check_value(value, field))


def _systemd_plain(value: Any, field: str) -> str:
    text = check_value(value, field)
    for bad in ('"', "'", "\\"):
        if bad in text:
            raise RenderError(f"{field}: {text!r} contains {bad!r}, which systemd does not allow here")
    return text.replace("%", "%%")


def systemd_exe(value: Any, field: str) -> str:
    """The executable of an ``Exec*=`` line: quoted, ``%`` doubled; systemd
    refuses quotes and backslashes in an executable name, so they are refused here."""
    text = _systemd_plain(value, field)
    if not text.startswith("/"):
        raise RenderError(f"{field}: {text!r} must be an absolute path")
    return f'"{text}"'


def systemd_arg(value: Any, field: str) -> str:
    """One argument of an ``Exec*=`` line: double-quoted, with C escapes for
    ``\\`` and ``"``, ``%%`` for specifiers and ``$$`` for variable expansion."""
    text = check_value(value, field)
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def systemd_path(value: Any, field: str) -> str:
    """One entry of a space-separated path list such as ``ReadWritePaths=``."""
    text = _systemd_plain(value, field)
    if not text.startswith("/"):
        raise RenderError(f"{field}: {text!r} must be an absolute path")
    return f'"{text}"'


def systemd_value(value: Any, field: str) -> str:
    """A whole single-valued setting such as ``Description=``."""
    text = _systemd_plain(value, field)
    if text != text.strip():
        raise RenderError(f"{field}: {text!r} has leading or trailing spaces")
    return text


def systemd_env(value: Any, name: str) -> str:
    """One quoted ``NAME=value`` item of ``Environment=``."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise RenderError(f"{name!r} is not a valid environment variable name")
    return f'"{name}={_systemd_plain(value, name)}"'


def ini(value: Any, field: str, expansions: int = 1) -> str:
    """A supervisor INI value: ``%`` escaped once per %-expansion supervisor
    applies to it; refuses what the parser would eat."""
    text = check_value(value, field)
    if text != text.strip():
        raise RenderError(f"{field}: {text!r} has leading or trailing spaces, which INI drops")
    if _INI_COMMENT.search(text):
        raise RenderError(
            f"{field}: {text!r} has ';' or '#' after a space, which supervisor reads as a comment"
        )
    return text.replace("%", "%" * 2**expansions)


def yaml_scalar(value: Any, field: str) -> str:
    """A YAML flow scalar: JSON, which YAML reads back unchanged."""
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    return json.dumps(check_value(value, field), ensure_ascii=False)


class _Dumper(yaml.SafeDumper):
    """Safe dumper that writes multi-line strings as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def _check_tree(obj: Any, field: str) -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            check_value(key, field)
            sub = f"{field}.{key}"
            if key == "description" and isinstance(value, str):
                # Descriptions are free text and span lines by design.
                check_value(value, sub, multiline=True)
            else:
                _check_tree(value, sub)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_tree(value, f"{field}[{i}]")
    elif isinstance(obj, str):
        check_value(obj, field)


def dump_yaml(obj: Any) -> str:
    """Deterministic block YAML in the mapping's own order (no sorting, no width wrap)."""
    return yaml.dump(
        obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
        width=1 << 30,
    )


def to_yaml(obj: Any, field: str) -> str:
    """A whole YAML document for a mapping, every string checked first."""
    _check_tree(obj, field)
    # The template supplies the line end; keep one, not two.
    text = dump_yaml(obj)
    return text[:-1] if text.endswith("\n") else text


FILTERS = {
    "shell": shell,
    "systemd_exe": systemd_exe,
    "systemd_arg": systemd_arg,
    "systemd_path": systemd_path,
    "systemd_value": systemd_value,
    "systemd_env": systemd_env,
    "ini": ini,
    "yaml": yaml_scalar,
    "to_yaml": to_yaml,
}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja environment: strict undefined, no autoescape, trailing newlines kept."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


def render(template: str, context: Mapping[str, Any]) -> str:
    """Render one template; an undefined name is a bug and raises RenderError."""
    try:
        return environment().get_template(template).render(**context)
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {template}: {exc.message}") from None
    except jinja2.TemplateNotFound:
        raise RenderError(f"template {template} not found under {templates_dir()}") from None
