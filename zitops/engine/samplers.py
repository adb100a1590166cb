"""Sampler names: A1111 display names and aliases onto flow-matching samplers.

torch-free, so the HTTP layer can list samplers and the CLI can resolve a
name before any model loads. Only flow-matching samplers are sound for
Z-Image-Turbo; DDIM, PNDM and the other noise-prediction samplers are refused
with the list of valid names (NOTES.md 2.1).
"""

from __future__ import annotations

from typing import Any

from zitops.errors import InvalidRequest
from zitops.profile import SAMPLERS, SCHEDULES

SAMPLER_INFO: list[dict[str, Any]] = [
    {"name": "Euler", "sampler": "euler", "aliases": ["euler", "k_euler", "flowmatch_euler"],
     "options": {}},
    {"name": "Euler a", "sampler": "euler_a", "aliases": ["euler_a", "k_euler_a", "euler_ancestral",
                                                          "k_euler_ancestral"],
     "options": {"stochastic": "true"}},
    {"name": "Heun", "sampler": "heun", "aliases": ["heun", "k_heun"], "options": {"second_order": "true"}},
    {"name": "DPM++ 2M", "sampler": "dpmpp_2m", "aliases": ["dpmpp_2m", "k_dpmpp_2m"], "options": {}},
    {"name": "DPM++ 2M SDE", "sampler": "dpmpp_2m_sde", "aliases": ["dpmpp_2m_sde", "k_dpmpp_2m_sde"],
     "options": {"stochastic": "true"}},
    {"name": "UniPC", "sampler": "unipc", "aliases": ["unipc"], "options": {}},
    {"name": "LCM", "sampler": "lcm", "aliases": ["lcm", "k_lcm"], "options": {"stochastic": "true"}},
]
"""One entry per sampler, shaped like A1111's ``/sdapi/v1/samplers`` items
(``name``, ``aliases``, ``options``) plus the canonical zitops ``sampler``."""

SCHEDULE_INFO: list[dict[str, Any]] = [
    {"name": "simple", "label": "Simple", "aliases": ["simple", "automatic", "default", "normal"]},
    {"name": "karras", "label": "Karras", "aliases": ["karras"]},
    {"name": "exponential", "label": "Exponential", "aliases": ["exponential"]},
]
"""Sigma schedules, shaped like A1111's ``/sdapi/v1/schedulers`` items."""

# Names with no sound mapping onto a flow-matching model, with the reason.
_REFUSED = {
    "ddim": "DDIM is a noise-prediction sampler",
    "pndm": "PNDM is a noise-prediction sampler",
    "plms": "PLMS is a noise-prediction sampler",
    "ddpm": "DDPM is a noise-prediction sampler",
    "lms": "LMS is a noise-prediction sampler",
}
_SUFFIXES = {" karras": "karras", " exponential": "exponential"}


def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("-", " ").split())


def _lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for info in SAMPLER_INFO:
        for n in [info["name"], info["sampler"], *info["aliases"]]:
            table[_key(n)] = info["sampler"]
    return table


_TABLE = _lookup()


def valid_names() -> list[str]:
    """Every name a client may send, display names first."""
    return [info["name"] for info in SAMPLER_INFO] + list(SAMPLERS)


def resolve_sampler(name: str) -> tuple[str, str | None]:
    """Map a sampler name (A1111 display name, alias or canonical) to (sampler, schedule|None).

    ``"DPM++ 2M Karras"`` gives ``("dpmpp_2m", "karras")``; a plain name gives
    schedule ``None`` (keep the profile's). Unknown or unsound names raise
    InvalidRequest listing the valid names.
    """
    key = _key(name)
    if key in _TABLE:
        return _TABLE[key], None
    for suffix, schedule in _SUFFIXES.items():
        if key.endswith(suffix) and key[: -len(suffix)] in _TABLE:
            return _TABLE[key[: -len(suffix)]], schedule
    base = key.split(" ")[0] if key else key
    why = _REFUSED.get(base) or _REFUSED.get(key.replace(" ", ""))
    prefix = (f"sampler: {name!r} cannot drive Z-Image-Turbo ({why}; the model is flow-matching)"
              if why else f"sampler: unknown {name!r}")
    raise InvalidRequest(f"{prefix}; valid: {', '.join(valid_names())}")


def resolve_schedule(name: str) -> str:
    """Map a schedule name or label (``Karras``, ``Automatic``) to simple/karras/exponential."""
    key = _key(name)
    for info in SCHEDULE_INFO:
        if key in info["aliases"] or key == _key(info["label"]):
            return str(info["name"])
    raise InvalidRequest(f"schedule: unknown {name!r}; valid: {', '.join(SCHEDULES)}")


def display_name(sampler: str, schedule: str = "simple") -> str:
    """A1111's display name for a canonical sampler (plus the schedule when not simple)."""
    for info in SAMPLER_INFO:
        if info["sampler"] == sampler:
            label = str(info["name"])
            return label if schedule == "simple" else f"{label} {schedule.capitalize()}"
    return sampler
