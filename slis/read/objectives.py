"""An SLO's events out of window sums: which (stream, group) it covers, its errors and total.

The same arithmetic the generated Prometheus rules do (msgtally.alerts.promql),
over the engine's per-minute rows instead of counter increases: errors and
total are sums of tally counts (msgtally.names.INDICATORS), or for latency
the deliveries slower than the threshold, from the histogram's buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from msgtally.names import INDICATORS, RatioIndicator
from msgtally.slis.spec.model import SLO

from .windows import Sums


def covers(slo: SLO, stream: str, group: str) -> bool:
    """An SLO's (stream, group): its group, or every consumer group of its stream."""
    return stream == slo.stream and group != "" and slo.group in (None, group)


def events(slo: SLO, sums: Iterable[Sums]) -> tuple[int, int]:
    """(errors, total) of the SLO over these sums (those it does not cover are skipped)."""
    indicator = INDICATORS[slo.sli]
    errors = total = 0
    for s in sums:
        if s.group != "*" and not covers(slo, s.stream, s.group):
            continue
        if isinstance(indicator, RatioIndicator):
            errors += sum(s.counts[c] for c in indicator.errors)
            total += sum(s.counts[c] for c in indicator.total)
        else:
            assert slo.threshold is not None
            fast = sum(n for le, n in s.buckets.items()
                       if le != "+Inf" and float(le) <= slo.threshold + 1e-12)  # fmt: skip
            count = s.counts["latency_count"]
            errors += count - fast
            total += count
    return errors, total


def error_ratio(errors: int, total: int) -> float | None:
    """errors / total; None without events (as the rules give no sample)."""
    return errors / total if total else None


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
