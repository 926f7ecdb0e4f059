"""Error budget and burn-rate arithmetic."""

from __future__ import annotations

import pytest

from msgtally.slis.spec.budget import (
    budget_share,
    burn_factor,
    burn_rate,
    error_budget,
    exhaustion,
    ideal_left,
    objective_ratio,
    remaining_budget,
)

DAY, HOUR = 86_400, 3_600


@pytest.mark.parametrize(
    ("objective", "budget"), [(99.9, 0.001), (99, 0.01), (99.5, 0.005), (95, 0.05), (99.99, 0.0001),
                              (99.95, 0.0005), (50, 0.5)]
)  # fmt: skip
def test_error_budget_is_exact(objective: float, budget: float) -> None:
    assert error_budget(objective) == budget
    assert objective_ratio(objective) == pytest.approx(1 - budget, abs=1e-15)


def test_objective_ratio_reads_like_the_spec() -> None:
    assert objective_ratio(99.9) == 0.999
    assert objective_ratio(99.95) == 0.9995


@pytest.mark.parametrize("objective", [0, 100, -1, 101])
def test_objective_out_of_range(objective: float) -> None:
    with pytest.raises(ValueError, match="above 0 and below 100"):
        error_budget(objective)


@pytest.mark.parametrize(
    ("share", "period", "window", "factor"),
    [
        (0.02, 30 * DAY, HOUR, 14.4),
        (0.05, 30 * DAY, 6 * HOUR, 6.0),
        (0.10, 30 * DAY, DAY, 3.0),
        (0.10, 30 * DAY, 3 * DAY, 1.0),
        (0.02, 28 * DAY, HOUR, 13.44),
        (0.10, 28 * DAY, 3 * DAY, 0.9333333333),
        (0.02, 12 * HOUR, 60, 14.4),
    ],
)
def test_burn_factor(share: float, period: int, window: int, factor: float) -> None:
    assert burn_factor(share, period, window) == factor
    assert budget_share(factor, period, window) == pytest.approx(share, rel=1e-9)


def test_burn_rate_and_remaining_budget() -> None:
    assert burn_rate(0.0144, 99.9) == pytest.approx(14.4)
    assert remaining_budget(0.0, 99.9) == 1.0
    assert remaining_budget(0.0005, 99.9) == pytest.approx(0.5)
    assert remaining_budget(0.002, 99.9) == pytest.approx(-1.0)


def test_burn_factor_needs_positive_durations() -> None:
    with pytest.raises(ValueError):
        burn_factor(0.02, 30 * DAY, 0)


def test_a_constant_burn_runs_the_budget_out_when_the_forecast_says() -> None:
    """Burning at a constant rate r (r = 1 spends the budget in one period), the
    budget left falls by r / period a second: it reaches 0 at remaining * period / r,
    and the forecast says exactly that, however much is left when it is asked."""
    period = 30 * 86_400
    for burn in (0.5, 1.0, 2.0, 14.4):
        for asked_at in (0.0, 3 * 86_400.0, 10 * 86_400.0):
            left = 1 - burn * asked_at / period
            if left <= 0:
                assert exhaustion(left, burn, period) == 0.0
                continue
            out_in = exhaustion(left, burn, period)
            assert out_in is not None
            assert asked_at + out_in == pytest.approx(period / burn)  # the start's forecast
    assert exhaustion(0.4, 0.0, period) is None  # no burn: never
    assert exhaustion(-0.1, 3.0, period) == 0.0  # spent already
    assert ideal_left(0.0, period / 4, period) == 0.75
