"""Text bound for an operator's terminal: control characters escaped, never interpreted.

Prompts, error messages and tracebacks come from clients. An escape sequence
in one (``\\x1b[2J``, a bidi override, a C1 control) must show up as text in
``zitops failures`` and ``zitops status``, not act on the terminal.
"""

from __future__ import annotations

import json
from typing import Any


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: Any) -> str:
    """``str(value)`` with every non-printable character (newlines too) spelled as an escape."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def json_line(value: Any) -> str:
    """One line of JSON whose every non-printable character is a ``\\u`` escape (still valid JSON)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
            code = ord(ch) - 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)
