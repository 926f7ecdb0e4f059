"""Latency quantiles from the engine's sketch: 1 % relative error, any history.

The engine counts every observed latency into a logarithmic bin (a DDSketch
with relative accuracy 0.01: bin i holds the values in (g^(i-1), g^i] with
g = 1.01/0.99). The bins of all history are kept in the store, so a
quantile costs the number of bins, not the number of latencies. The value
returned for a bin is the one whose relative distance to both ends is 1 %,
so the nearest-rank quantile is within 1 % of the exact one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)  # as msgtally.reconcile._machine
OFFSET = 100_000  # as msgtally.reconcile._machine: bin 0 is zero itself, -b mirrors b


def bin_value(b: int) -> float:
    """The representative latency of a bin."""
    if b == 0:
        return 0.0
    i = abs(b) - OFFSET
    value = 2 * GAMMA**i / (GAMMA + 1)
    return value if b > 0 else -value


def quantile(bins: Mapping[int, int], q: float) -> float | None:
    """The nearest-rank q-quantile of the sketched latencies; None if there are none."""
    total = sum(bins.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(bins, key=bin_value):
        seen += bins[b]
        if seen >= rank:
            return bin_value(b)
    return bin_value(max(bins, key=bin_value))
