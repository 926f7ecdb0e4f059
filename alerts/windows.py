"""The multi-window multi-burn-rate table, as data, and its scaling to any SLO period.

The SRE Workbook's table for a 30-day period: each tier alerts when a share
of the error budget would be spent within its long window, confirmed by a
short window of 1/12 of it so the alert stops soon after the burn does.

For another period the windows scale with it (`long = base * period / 30d`),
snapped to a readable duration (LADDER), and the factor is computed back from
the snapped window so the tier still means exactly its share of the budget:
`factor = share * period / long`. A 28d period keeps the 30d windows (factors
13.44, 5.6, 2.8, 0.93); a 12h period would alert on a 5-second window.

No window is shorter than four scrape intervals (Prometheus's advice for
`rate` and `increase`: a window needs two samples, and a missed scrape or
two must not leave it with fewer). A window the period makes shorter is
raised to that floor (`floor`: 4 scrape intervals, rounded up to the LADDER),
and the tier keeps its factor: it still fires on a burn that would spend the
whole budget in `period / factor`, never on one the budget can absorb, but
it now needs a larger share of the budget spent in its (longer) window
before it fires (`share = factor * long / period`, reported by `check`).
Recomputing the factor instead would keep the share and drop the factor,
below 1 for short periods: a page for a burn that never exhausts the budget.
Tiers of one severity that the floor gives the same windows are one tier:
the one with the lowest factor fires whenever the others would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from msgtally.slis.spec.budget import budget_share, burn_factor
from msgtally.slis.spec.model import DEFAULT_SCRAPE_INTERVAL, Spec

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


SAMPLES_PER_WINDOW = 4  # scrape intervals in the shortest window: two samples, after two misses


@dataclass(frozen=True)
class Window:
    """A tier scaled to one period and scrape interval: what the rules use."""

    severity: str
    share: float  # of the error budget spent in `long` at `factor` (the tier's, unless raised)
    factor: float  # burn rate threshold
    long: int  # seconds
    short: int  # seconds
    tier: int = 1  # its row of TIERS, from 1
    scaled_long: int = 0  # what the period alone gives, before the floor (0: same as long)
    scaled_short: int = 0
    merged: tuple[int, ...] = ()  # tiers the floor gave the same windows, dropped for this one

    @property
    def long_text(self) -> str:
        return format_duration(self.long)

    @property
    def short_text(self) -> str:
        return format_duration(self.short)

    @property
    def long_raised(self) -> bool:
        return self.scaled_long not in (0, self.long)

    @property
    def short_raised(self) -> bool:
        return self.scaled_short not in (0, self.short)


def snap(seconds: float) -> int:
    """The LADDER duration nearest to `seconds` on a log scale (ties: the shorter)."""
    if seconds <= LADDER[0]:
        return LADDER[0]
    if seconds >= LADDER[-1]:
        return LADDER[-1]
    return min(LADDER, key=lambda d: (abs(math.log(d / seconds)), d))


def floor(scrape_interval: int) -> int:
    """The shortest window for a scrape interval: four of them, rounded up to the LADDER."""
    least = SAMPLES_PER_WINDOW * scrape_interval
    return next((d for d in LADDER if d >= least), least)


def scale(
    period_seconds: int,
    scrape_interval: int = DEFAULT_SCRAPE_INTERVAL,
    tiers: tuple[Tier, ...] = TIERS,
) -> tuple[Window, ...]:
    """The burn-rate windows and factors for an SLO period and a scrape interval."""
    least = floor(scrape_interval)
    out: list[Window] = []
    for number, tier in enumerate(tiers, 1):
        scaled_long = snap(tier.long * period_seconds / BASE_PERIOD)
        scaled_short = snap(scaled_long / SHORT_DIVISOR)
        long, short = max(scaled_long, least), max(scaled_short, least)
        factor = burn_factor(tier.share, period_seconds, scaled_long)
        window = Window(
            severity=tier.severity,
            share=budget_share(factor, period_seconds, long),
            factor=factor,
            long=long,
            short=short,
            tier=number,
            scaled_long=scaled_long,
            scaled_short=scaled_short,
        )
        same = [
            i
            for i, w in enumerate(out)
            if (w.severity, w.long, w.short) == (window.severity, long, short)
        ]
        if not same:
            out.append(window)
            continue
        # The floor gave two tiers of one severity the same windows: the lower factor
        # fires whenever the higher would, so one alert, the lower factor's.
        kept, dropped = sorted((out[same[0]], window), key=lambda w: w.factor)
        out[same[0]] = replace(kept, merged=(*kept.merged, dropped.tier, *dropped.merged))
    return tuple(out)


def spec_windows(spec: Spec) -> tuple[Window, ...]:
    """The windows of a spec: its period at its scrape interval."""
    return scale(spec.period.seconds, spec.scrape_interval)


def keep_firing_for(scrape_interval: int) -> int:
    """How long a page keeps firing once its expression stops holding: two scrape intervals,
    so one missed scrape (every series of the target stale until the next) never resolves
    and re-sends a page, whatever the rule evaluation interval."""
    return 2 * scrape_interval


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
