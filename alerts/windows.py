"""The multi-window multi-burn-rate table, as data, and its scaling to any SLO period.

The SRE Workbook's table for a 30-day period: each tier alerts when a share
of the error budget would be spent within its long window, confirmed by a
short window of 1/12 of it so the alert stops soon after the burn does.

For another period the windows scale with it (`long = base * period / 30d`),
snapped to a readable duration (LADDER), and the factor is computed back from
the snapped window so the tier still means exactly its share of the budget:
`factor = share * period / long`. A 28d period keeps the 30d windows (factors
13.44, 5.6, 2.8, 0.93); a 12h period alerts on 1-minute windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from msgtally.slis.spec.budget import burn_factor

BASE_PERIOD = 30 * 86_400
SHORT_DIVISOR = 12  # the short window is 1/12 of the long one (5m of 1h, 2h of 1d ...)


@dataclass(frozen=True)
class Tier:
    """One row of the table: severity, budget share, windows in seconds at 30d."""

    severity: str  # page | ticket
    share: float  # of the error budget spent in `long` at the tier's burn rate
    long: int
    short: int


# The SRE Workbook, chapter "Alerting on SLOs", table 5-8 (30-day period).
TIERS: tuple[Tier, ...] = (
    Tier("page", 0.02, 3_600, 300),  # 14.4x over 1h and 5m
    Tier("page", 0.05, 6 * 3_600, 1_800),  # 6x over 6h and 30m
    Tier("ticket", 0.10, 86_400, 7_200),  # 3x over 1d and 2h
    Tier("ticket", 0.10, 3 * 86_400, 6 * 3_600),  # 1x over 3d and 6h
)

_S, _M, _H, _D = 1, 60, 3_600, 86_400
# Readable durations a scaled window snaps to (nearest on a log scale).
LADDER: tuple[int, ...] = tuple(
    sorted(
        {n * _S for n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 45)}
        | {n * _M for n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 45)}
        | {n * _H for n in (1, 2, 3, 4, 6, 8, 12, 18)}
        | {n * _D for n in range(1, 366)}
    )
)


@dataclass(frozen=True)
class Window:
    """A tier scaled to one period: what the rules use."""

    severity: str
    share: float
    factor: float  # burn rate threshold
    long: int  # seconds
    short: int  # seconds

    @property
    def long_text(self) -> str:
        return format_duration(self.long)

    @property
    def short_text(self) -> str:
        return format_duration(self.short)


def snap(seconds: float) -> int:
    """The LADDER duration nearest to `seconds` on a log scale (ties: the shorter)."""
    if seconds <= LADDER[0]:
        return LADDER[0]
    if seconds >= LADDER[-1]:
        return LADDER[-1]
    return min(LADDER, key=lambda d: (abs(math.log(d / seconds)), d))


def scale(period_seconds: int, tiers: tuple[Tier, ...] = TIERS) -> tuple[Window, ...]:
    """The burn-rate windows and factors for an SLO period."""
    out = []
    for tier in tiers:
        long = snap(tier.long * period_seconds / BASE_PERIOD)
        short = snap(long / SHORT_DIVISOR)
        out.append(
            Window(
                severity=tier.severity,
                share=tier.share,
                factor=burn_factor(tier.share, period_seconds, long),
                long=long,
                short=short,
            )
        )
    return tuple(out)


def format_duration(seconds: int) -> str:
    """Seconds as a Prometheus duration: 300 -> 5m, 5400 -> 1h30m, 2592000 -> 30d."""
    if seconds <= 0:
        raise ValueError(f"duration has value {seconds!r}. Must be positive.")
    out = ""
    for unit, size in (("d", _D), ("h", _H), ("m", _M), ("s", _S)):
        n, seconds = divmod(seconds, size)
        if n:
            out += f"{n}{unit}"
    return out


def rule_windows(windows: tuple[Window, ...], period_seconds: int) -> tuple[int, ...]:
    """Every window a recording rule is needed for: the alerts' and the period."""
    return tuple(sorted({w.long for w in windows} | {w.short for w in windows} | {period_seconds}))
