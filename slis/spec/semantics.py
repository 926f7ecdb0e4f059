"""Delivery semantics: what each promise forbids, and the strongest one a set of figures keeps.

at-most-once may lose but never duplicate, at-least-once may duplicate but
never lose, exactly-once does neither. A breach is one tally count moving:
`lost` for a loss (an id not delivered ok by its deadline, dead-lettered ones
included), `duplicated` for a duplicate (an ok delivery beyond the first).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Semantics(StrEnum):
    AT_MOST_ONCE = "at-most-once"
    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


class Breach(StrEnum):
    LOSS = "loss"
    DUPLICATE = "duplicate"


# The tally count of each breach, and the discrepancy kind that lists its ids.
BREACH_COUNTS: Mapping[Breach, str] = MappingProxyType(
    {Breach.LOSS: "lost", Breach.DUPLICATE: "duplicated"}
)
FORBIDS: Mapping[Semantics, tuple[Breach, ...]] = MappingProxyType(
    {
        Semantics.AT_MOST_ONCE: (Breach.DUPLICATE,),
        Semantics.AT_LEAST_ONCE: (Breach.LOSS,),
        Semantics.EXACTLY_ONCE: (Breach.LOSS, Breach.DUPLICATE),
    }
)
# Strongest first: exactly-once keeps both promises the others make one of.
STRONGEST_FIRST = (Semantics.EXACTLY_ONCE, Semantics.AT_LEAST_ONCE, Semantics.AT_MOST_ONCE)
NONE = "none"


def breaches(semantics: Semantics, counts: Mapping[str, int]) -> dict[Breach, int]:
    """The breaches of a promise in a set of counts, each with its count (0: kept)."""
    return {b: int(counts.get(BREACH_COUNTS[b], 0)) for b in FORBIDS[semantics]}


def observed_semantics(counts: Mapping[str, int]) -> str | None:
    """The strongest semantics the counts keep, `none` when they keep none;
    None when nothing was produced (no traffic is no figure)."""
    if not counts.get("produced"):
        return None
    for semantics in STRONGEST_FIRST:
        if not any(breaches(semantics, counts).values()):
            return semantics.value
    return NONE
