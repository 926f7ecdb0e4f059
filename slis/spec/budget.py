"""Error budget and burn-rate arithmetic, in plain numbers.

An objective of 99.9 % leaves an error budget of 0.001: the share of events
that may fail over the SLO period. A burn rate is how many times faster than
that the budget is being spent; burning at rate `f` for a window `w` spends
`f * w / period` of the budget.
"""

from __future__ import annotations

from decimal import Decimal

# Significant digits kept of computed factors, so rule files stay readable
# (0.9333333333, not 0.9333333333333333) and the same on every platform.
_DIGITS = 10


def _round(value: float) -> float:
    return float(f"{value:.{_DIGITS}g}")


def error_budget(objective: float) -> float:
    """The error ratio allowed by an objective in percent: 99.9 -> 0.001 (exactly)."""
    if not 0 < objective < 100:
        raise ValueError(f"objective has value {objective!r}. Must be above 0 and below 100.")
    return float((Decimal(100) - Decimal(repr(float(objective)))) / Decimal(100))


def objective_ratio(objective: float) -> float:
    """An objective in percent as a ratio: 99.9 -> 0.999 (exactly)."""
    return float(Decimal(repr(float(objective))) / Decimal(100))


def burn_rate(error_ratio: float, objective: float) -> float:
    """How many times faster than allowed the budget burns at this error ratio."""
    return error_ratio / error_budget(objective)


def burn_factor(share: float, period_seconds: float, window_seconds: float) -> float:
    """The burn rate that spends `share` of the budget in `window_seconds` of the period."""
    if window_seconds <= 0 or period_seconds <= 0:
        raise ValueError("period and window must be positive durations")
    return _round(share * period_seconds / window_seconds)


def budget_share(factor: float, period_seconds: float, window_seconds: float) -> float:
    """The share of the budget spent by burning at `factor` for `window_seconds`."""
    return _round(factor * window_seconds / period_seconds)


def remaining_budget(error_ratio: float, objective: float) -> float:
    """The budget left over a period whose error ratio was `error_ratio` (may go below 0)."""
    return 1 - burn_rate(error_ratio, objective)


def period_budget(events: float, elapsed: float, period_seconds: float, objective: float) -> float:
    """The errors the whole period may have, in messages: the budget's share of the
    events the period holds at the rate seen so far (`events` in `elapsed` seconds).
    A store that covers the whole period (`elapsed` = the period) gives budget x events."""
    if elapsed <= 0:
        return 0.0
    return error_budget(objective) * events * period_seconds / min(elapsed, period_seconds)


def budget_left(errors: float, allowed: float) -> float | None:
    """The share of a budget of `allowed` errors not spent yet (below 0 once overspent);
    None when nothing is allowed yet (no events)."""
    return 1 - errors / allowed if allowed > 0 else None


def exhaustion(remaining: float, burn: float, period_seconds: float) -> float | None:
    """Seconds until the budget runs out, burning at `burn` (1: spends the whole budget
    in one period): `remaining * period / burn`. 0 when it is spent; None when it
    never runs out at this rate."""
    if remaining <= 0:
        return 0.0
    if burn <= 0:
        return None
    return remaining * period_seconds / burn


def ideal_left(start: float, t: float, period_seconds: float) -> float:
    """The budget left at `t` when it is spent evenly over the period from `start`."""
    return 1 - (t - start) / period_seconds
