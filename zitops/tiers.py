"""Which profile a card gets from its memory: a pure policy, torch- and NVML-free.

``zitops deploy --profile auto`` and ``zitops doctor`` gather the cards'
memory (NVML, through :mod:`zitops.gpu`) and hand it here; :func:`choose_tier`
returns the profile and the reason, and the caller applies it.

The thresholds are in MiB as NVML reports a card's total, which is a little
under the size on the box (a "16 GB" card reports about 16,376 MiB, a "12 GB"
one about 12,282, an "8 GB" one about 8,188), and each leaves room for the
CUDA context (about 0.5 GiB) above the tier's measured peak:

| total memory (NVML)        | profile      | why                                                    |
|----------------------------|--------------|--------------------------------------------------------|
| >= 22 GiB (22,528 MiB)     | designer     | everything resident: 21.3 GiB peak (H200, 1024x1024)   |
| >= 15.5 GiB (15,872 MiB)   | lowvram      | the 16 GB class (docs/benchmarks.md)                   |
| >= 11.5 GiB (11,776 MiB)   | lowvram-12   | fp8, text encoder streamed: 10.58 GiB under 11.5 (H200)|
| >= 7.5 GiB (7,680 MiB)     | lowvram-8    | fp8, model offload: 6.99 GiB under 7.5 GiB (H200)      |
| less                       | refused      | :class:`TierError` names the minimum                   |

Cards between two classes (10 and 11 GB, 20 GB) take the smaller tier, whose
peak they hold. With no GPU only the tiny random model runs (on the CPU, as
``zitops doctor`` treats it): it gets ``designer``; anything else is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zitops.errors import ZitopsError

GIB_MIB = 1024
AUTO_PROFILE = "auto"
"""The ``--profile`` value that asks for this policy."""

TIERS: tuple[tuple[int, str], ...] = (
    (22 * GIB_MIB, "designer"),
    (15 * GIB_MIB + 512, "lowvram"),
    (11 * GIB_MIB + 512, "lowvram-12"),
    (7 * GIB_MIB + 512, "lowvram-8"),
)
"""(least total MiB, profile), largest first."""

MIN_MIB = TIERS[-1][0]
"""The smallest card any tier serves: an 8 GB card (7.5 GiB as NVML reports it)."""

CPU_PROFILE = "designer"
"""The tiny model on a host without a GPU (its sizes and steps; offload means nothing on the CPU)."""


class TierError(ZitopsError):
    """No profile fits this host: the card is too small, or there is no GPU for real weights."""


@dataclass(frozen=True)
class TierChoice:
    """The profile chosen and the reason, in words an operator can check."""

    profile: str
    reason: str


@dataclass(frozen=True)
class Card:
    """One GPU as the policy sees it."""

    index: int
    name: str
    total_mib: float


def tier_for_mib(total_mib: float) -> str:
    """The profile for a card of ``total_mib``; raises :class:`TierError` below :data:`MIN_MIB`."""
    for least, profile in TIERS:
        if total_mib >= least:
            return profile
    raise TierError(f"{total_mib / GIB_MIB:.1f} GiB of GPU memory is below the smallest tier, lowvram-8, "
                    f"which needs at least {MIN_MIB} MiB ({MIN_MIB / GIB_MIB:g} GiB as NVML reports an "
                    "8 GB card); use a card with 8 GB or more")


def choose_tier(cards: Sequence[Card], *, tiny: bool) -> TierChoice:
    """The profile for a deployment on ``cards`` (every worker gets the same one, so the smallest decides)."""
    if not cards:
        if tiny:
            return TierChoice(CPU_PROFILE, "no GPU seen: the tiny random model runs on the CPU "
                              f"with {CPU_PROFILE}'s settings")
        raise TierError("--profile auto: no GPU seen through NVML, and real weights need one; run on a host "
                        "with an NVIDIA GPU, name a profile with --profile, or use --model tiny")
    smallest = min(cards, key=lambda c: c.total_mib)
    profile = tier_for_mib(smallest.total_mib)
    least = next(mib for mib, name in TIERS if name == profile)
    which = f"GPU {smallest.index} ({smallest.name})" if len(cards) == 1 else \
        f"the smallest of {len(cards)} GPUs, {smallest.index} ({smallest.name})"
    return TierChoice(profile, f"{which} has {smallest.total_mib:.0f} MiB; {profile} is the largest tier "
                      f"that fits (from {least} MiB)")
