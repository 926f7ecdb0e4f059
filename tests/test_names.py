"""The names table: every part that restates it agrees with it."""

from __future__ import annotations

import dataclasses

from msgtally.alerts.promtests import EVENTS, _ratio_steps
from msgtally.names import (
    COUNT_FIELDS,
    COUNTERS,
    INDICATORS,
    TALLY_FIELDS,
    LatencyIndicator,
    RatioIndicator,
    SLIKind,
)
from msgtally.reconcile import _machine
from msgtally.slis.read.figures import SLI
from msgtally.store.tables import tallies


def test_every_sli_kind_has_one_indicator_over_known_counts() -> None:
    assert set(INDICATORS) == set(SLIKind)
    for ind in INDICATORS.values():
        if isinstance(ind, RatioIndicator):
            for column in (*ind.errors, *ind.total, *ind.good):
                assert column in COUNTERS, column
        else:
            assert isinstance(ind, LatencyIndicator)


def test_the_engine_and_the_store_keep_the_same_counts() -> None:
    assert _machine.TALLY_FIELDS == TALLY_FIELDS
    assert set(COUNTERS) == set(COUNT_FIELDS)
    assert set(TALLY_FIELDS) <= set(tallies.c.keys())


def test_generated_promtool_series_hold_the_ratio_of_each_kind() -> None:
    for ind in INDICATORS.values():
        if not isinstance(ind, RatioIndicator):
            continue
        steps = _ratio_steps(ind, 7)
        errors = sum(steps[c] for c in ind.errors)
        total = sum(steps[c] for c in ind.total)
        assert (errors, total) == (7, EVENTS), ind


def test_the_figures_carry_every_tally_field() -> None:
    """The SLI row states the tally fields as typed attributes; it may not drift."""
    fields = [f.name for f in dataclasses.fields(SLI)]
    assert fields[2 : 2 + len(TALLY_FIELDS)] == list(TALLY_FIELDS)
