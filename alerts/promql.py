"""PromQL for each SLI kind: the error ratio over a window, from counter increases.

Every ratio is `errors / (events > 0)`: when nothing happened in the window
the comparison drops the denominator and the rule gives no sample, never NaN
or +Inf, so a quiet night does not spoil a long window. Each window is its
own increase over the raw counters, never an average of shorter ratios.
"""

from __future__ import annotations

import json

from msgtally.names import INDICATORS, RatioIndicator, bucket_label, counter
from msgtally.slis.spec.model import SLO

PRODUCED = counter("produced")


def quote(value: str) -> str:
    """A PromQL string literal (JSON's escaping is a subset PromQL reads)."""
    return json.dumps(value, ensure_ascii=False)


def matchers(slo: SLO, *extra: str) -> str:
    """`stream="orders",group="billing"`; without a group, every group of the stream."""
    parts = [f"stream={quote(slo.stream)}"]
    if slo.group is not None:
        parts.append(f"group={quote(slo.group)}")
    return ",".join([*parts, *extra])


def le_matcher(threshold: float) -> str:
    """The bucket of a threshold as the collector writes it (`2.5`, `1.0`).

    A whole number also matches its short form (`1`), which is how Prometheus
    3 normalises `le` of classic histograms.
    """
    label = bucket_label(threshold)
    if threshold == int(threshold):
        short = str(int(threshold))
        return f'le=~"{short}|{short}\\\\.0"'
    return f"le={quote(label)}"


def _increase(selector: str, window: str) -> str:
    return f"sum(increase({selector}[{window}]))"


def error_ratio(slo: SLO, window: str) -> str:
    """The SLO's error ratio over `window`; no sample when there were no events."""
    m = matchers(slo)
    ind = INDICATORS[slo.sli]
    if isinstance(ind, RatioIndicator):
        # One sum per counter: increase() drops the names, so a regex over
        # __name__ would give series with the same labels.
        errors = " + ".join(_increase(f"{counter(c)}{{{m}}}", window) for c in ind.errors)
        if len(ind.errors) > 1:
            errors = f"({errors})"
        events = " + ".join(_increase(f"{counter(c)}{{{m}}}", window) for c in ind.total)
    else:
        assert slo.threshold is not None
        count = _increase(f"{ind.histogram}_count{{{m}}}", window)
        le = le_matcher(slo.threshold)
        fast = _increase(f"{ind.histogram}_bucket{{{matchers(slo, le)}}}", window)
        errors = f"({count} - {fast})"
        events = count
    return f"{errors}\n/\n({events} > 0)"


def presence(slo: SLO) -> str:
    """The series whose absence means the SLI is not measured at all."""
    return f"{PRODUCED}{{{matchers(slo)}}}"
