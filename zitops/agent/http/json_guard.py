"""Refuse JSON bodies that would cost work or fail late: too deeply nested, or integers too long to parse.

Python refuses to turn more than 4,300 digits into an int (``sys.int_max_str_digits``),
so FastAPI would answer such a body with a bare 400; and a free-form field
(A1111's ``comments``, ``script_args``) nested hundreds of levels deep parses, runs
the job, and fails when the result is stored. The edge asks :func:`json_problem`
first and answers 422 naming the field, before any work is done. Pure functions.

The routes' body vocabulary lives here too: :class:`Body` (unknown fields refused, every string valid
UTF-8 text, no boolean for an integer), the strict :data:`Num` and :data:`Flag`, the text patterns,
:func:`only`, and the hard schema ceilings every dialect shares.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Strict, ValidationInfo, field_validator

SIDE_CAP = 8192
"""Hard schema ceilings, the highest values any config's limits may allow (zitops.config.Limits);
the published OpenAPI states the running agent's own, tighter limits (zitops.agent.http.openapi)."""
STEPS_CAP = 1000
IMAGES_CAP = 64
PROMPT_CAP = 100_000
SEED_CAP = 2**32 - 1
NAME_CAP = 200
"""Longest sampler, schedule, model or other name field."""

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


def text_problem(value: Any) -> str | None:
    """Why ``value`` (a string, or strings nested in lists and dicts) is not valid UTF-8 text, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"not valid UTF-8 text: lone surrogate U+{ord(value[exc.start]):04X} at character "
                    f"{exc.start}; send text, not half of a UTF-16 pair")
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key) or text_problem(item)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for item in value:
            problem = text_problem(item)
            if problem:
                return problem
    return None


def no_bool_for_int(value: Any) -> Any:
    """Refuse a JSON boolean where the schema says integer (pydantic would take it as 1 or 0)."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not true or false")
    return value


def _has(annotation: Any, kind: type) -> bool:
    if annotation is kind:
        return True
    return any(_has(arg, kind) for arg in get_args(annotation))


@functools.cache
def _int_only_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields whose type admits an int and no bool."""
    return frozenset(name for name, f in model.model_fields.items()
                     if _has(f.annotation, int) and not _has(f.annotation, bool))


class Body(BaseModel):
    """A request body: unknown fields refused, every string valid UTF-8 text.

    JSON may spell half of a UTF-16 surrogate pair (``"\\ud800"``); Python
    decodes it to a string that cannot be encoded again, which would fail
    much later (logging, SQLite, the response), so it is refused at the edge.
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_int(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode takes true/false as 1/0 for an int field; the schema says integer.
        # A field typed ``Flag | int`` (A1111's inpaint_full_res, which webuiapi sends as a boolean) keeps it.
        if isinstance(value, bool) and info.field_name in _int_only_fields(cls):
            raise ValueError("must be an integer, not true or false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _utf8(cls, value: Any) -> Any:
        problem = text_problem(value)
        if problem:
            raise ValueError(problem)
        return value


Num = Annotated[float, Strict()]
"""A JSON number: never a string or a boolean coerced into one (the schema says number)."""
Flag = Annotated[bool, Strict()]
"""A JSON boolean: never "true", 0 or 1 coerced into one."""


PROMPT_PATTERN = r"^[^\u0000]*\S[^\u0000]*$"
"""A prompt: not blank, no NUL (validate_request refuses both)."""
TEXT_PATTERN = r"^[^\u0000]*$"
"""Free text that reaches the engine: no NUL."""


def only(*values: Any) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` that publishes a field as exactly ``values``.

    For fields a client may send only at neutral values: the model still
    accepts the rest, so the route can answer with a message naming the field
    and what to send, while the schema says what will be accepted.
    """
    def apply(schema: dict[str, Any]) -> None:
        keep: dict[str, Any] = {k: schema[k] for k in ("title", "description", "default") if k in schema}
        schema.clear()
        schema.update(keep)
        schema["enum"] = list(values)

    return apply
