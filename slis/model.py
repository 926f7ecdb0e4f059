"""SLI figures per (stream, group): the counts, the ratios, the latency quantiles."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from msgtally.ingest.tables import TALLY_FIELDS

# The counts of a tally row (latency_count is the histogram's, not an outcome).
COUNT_FIELDS = tuple(f for f in TALLY_FIELDS if f != "latency_count")
QUANTILES = (("latency_p50", 0.50), ("latency_p90", 0.90), ("latency_p99", 0.99))


def ratio(numerator: int, denominator: int) -> float | None:
    """None, not NaN, when there is nothing to divide by: no traffic is no figure."""
    return numerator / denominator if denominator else None


def nearest_rank(q: float, n: int) -> int:
    """0-based index of the q-quantile of n sorted values (nearest-rank method)."""
    if n <= 0:
        raise ValueError("nearest_rank needs at least one value")
    return max(0, math.ceil(q * n) - 1)


@dataclass(frozen=True)
class SLI:
    stream: str
    group: str
    produced: int
    delivered: int
    lost: int
    late: int
    recovered: int
    unexpected: int
    duplicated: int
    retried: int
    attempts: int
    dead_lettered: int
    consume_errors: int
    latency_count: int
    latency_sum: float
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    # Records the shims dropped before sending (measurement loss, not message
    # loss): the stream's produce drops plus this group's consume drops.
    records_dropped: int = 0

    @property
    def delivery_success_ratio(self) -> float | None:
        return ratio(self.delivered, self.produced)

    @property
    def loss_ratio(self) -> float | None:
        return ratio(self.lost, self.produced)

    @property
    def duplicate_ratio(self) -> float | None:
        ok_deliveries = self.delivered + self.late + self.recovered + self.duplicated
        return ratio(self.duplicated, ok_deliveries)

    @property
    def retry_ratio(self) -> float | None:
        return ratio(self.retried, self.produced)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("delivery_success_ratio", "loss_ratio", "duplicate_ratio", "retry_ratio"):
            out[name] = getattr(self, name)
        return out
