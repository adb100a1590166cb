"""Refuse JSON bodies that would cost work or fail late: too deeply nested, or integers too long to parse.

Python refuses to turn more than 4,300 digits into an int (``sys.int_max_str_digits``),
so FastAPI would answer such a body with a bare 400; and a free-form field
(A1111's ``comments``, ``script_args``) nested hundreds of levels deep parses, runs
the job, and fails when the result is stored. The edge asks :func:`json_problem`
first and answers 422 naming the field, before any work is done. Pure functions.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32
"""Containers inside containers a body may have; every route's own schema needs fewer than 8."""
MAX_INT_DIGITS = 4300
"""Python's default ``sys.int_max_str_digits``: past it, ``int()`` refuses the text."""


class _HugeInt:
    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(text: str) -> int | _HugeInt:
    digits = len(text.lstrip("-"))
    return _HugeInt(digits) if digits > MAX_INT_DIGITS else int(text)


def json_problem(body: bytes) -> tuple[str, str] | None:
    """(field, message) for a body that must be refused, or None (also for text that is not JSON at all:
    the route's own parser answers that)."""
    try:
        data = json.loads(body, parse_int=_parse_int)
    except RecursionError:
        return "body", f"nested too deeply; at most {MAX_DEPTH} levels of arrays and objects allowed"
    except ValueError:
        return None
    stack: list[tuple[Any, tuple[str, ...], int]] = [(data, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        where = ".".join(path) or "body"
        if isinstance(value, _HugeInt):
            return where, (f"a number of {value.digits} digits; integers of at most {MAX_INT_DIGITS} digits "
                           "are read (and every field has a far smaller bound: see /openapi.json)")
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                return where, f"nested too deeply; at most {MAX_DEPTH} levels of arrays and objects allowed"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, (*path, str(k)), depth + 1) for k, v in items)
    return None


def is_json(content_type: str | None, body: bytes) -> bool:
    """True for a body FastAPI would parse as JSON."""
    if content_type:
        return "json" in content_type.lower()
    return body.lstrip()[:1] in (b"{", b"[")
