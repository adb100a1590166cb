"""LoRA files on disk and the ways a request names them; torch-free (the agent lists and checks them).

A deployment's LoRAs are ``*.safetensors`` files directly in its LoRA
directory (``zitops deploy --lora-dir``, default ``<out>/loras``); a LoRA's
name is its file name without the suffix. Requests name them through
A1111's ``<lora:NAME:WEIGHT>`` prompt syntax or a ``loras`` field.
"""

from __future__ import annotations

import re
from pathlib import Path

from zitops.errors import InvalidRequest

SUFFIX = ".safetensors"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$"
"""A LoRA name: the file's stem, without path separators."""
MAX_FILE_BYTES = 4 * 2**30
"""Larger files are not listed: a Z-Image LoRA is megabytes, a mistaken full checkpoint is not a LoRA."""

FP8_REFUSAL = ("loras: not available while engine.fp8 is on (the transformer's linear layers are float8, "
               "which LoRA layers cannot wrap); use a profile with fp8 off to serve LoRAs")

_PROMPT_LORA = re.compile(r"<lora:([^:<>]{1,128})(?::([^:<>]{0,32}))?(?::[^<>]{0,32})?>")


def list_loras(lora_dir: str | Path | None) -> dict[str, Path]:
    """Name -> file of every LoRA in ``lora_dir`` (none when it is unset or missing), sorted by name."""
    if not lora_dir:
        return {}
    root = Path(lora_dir)
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        # Regular files only: a symlink could point anywhere on the host.
        if path.suffix != SUFFIX or path.is_symlink() or not path.is_file():
            continue
        if re.fullmatch(NAME_PATTERN, path.stem) and path.stat().st_size <= MAX_FILE_BYTES:
            found[path.stem] = path
    return found


def strip_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A1111's ``<lora:NAME:WEIGHT>`` tags out of ``prompt``: (the prompt without them, [(name, weight)]).

    A missing weight is 1; a weight that is not a number is refused, naming the tag.
    """
    wanted: list[tuple[str, float]] = []
    for match in _PROMPT_LORA.finditer(prompt):
        name, raw = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            weight = float(raw) if raw else 1.0
        except ValueError:
            raise InvalidRequest(f"prompt: <lora:{name}:{raw}> has a weight that is not a number") from None
        wanted.append((name, weight))
    cleaned = _PROMPT_LORA.sub("", prompt)
    return re.sub(r"\s{2,}", " ", cleaned).strip(" ,"), wanted


def check_loras(wanted: list[tuple[str, float]], lora_dir: str | Path | None,
                field: str = "loras") -> tuple[tuple[str, float], ...]:
    """The wanted LoRAs, each name known in ``lora_dir`` and given once; InvalidRequest naming any other."""
    known = list_loras(lora_dir)
    seen: dict[str, float] = {}
    for name, weight in wanted:
        if name not in known:
            # Never the directory's path: the caller may be any tenant (the operator knows where lora_dir is).
            have = ", ".join(known) or "none (the operator puts .safetensors files in the deployment's lora_dir)"
            raise InvalidRequest(f"{field}: unknown LoRA {name[:128]!r}; available: {have}"[:400])
        if name in seen:
            raise InvalidRequest(f"{field}: LoRA {name!r} is given twice")
        seen[name] = float(weight)
    return tuple(seen.items())
