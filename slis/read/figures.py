"""SLI figures per (stream, group): the counts, the ratios, the latency quantiles."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from msgtally.names import INDICATORS, RatioIndicator, SLIKind

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
    # Records missing from the senders' numbering (measurement loss the engine
    # found, from dead shims too): the stream's produces, this group's consumes.
    produce_records_missing: int = 0
    consume_records_missing: int = 0

    def _sum(self, columns: tuple[str, ...]) -> int:
        return sum(int(getattr(self, c)) for c in columns)

    def ratios(self) -> dict[str, float | None]:
        """delivery_success_ratio, then each ratio SLI's errors / total (msgtally.names)."""
        delivery = INDICATORS[SLIKind.DELIVERY]
        assert isinstance(delivery, RatioIndicator)
        out = {"delivery_success_ratio": ratio(self._sum(delivery.good), self._sum(delivery.total))}
        for ind in INDICATORS.values():
            if isinstance(ind, RatioIndicator):
                out[ind.ratio] = ratio(self._sum(ind.errors), self._sum(ind.total))
        return out

    def inflation(self) -> dict[str, int]:
        """How many lost and unexpected ids missing records may account for: a
        lost id whose consume record is missing may have been consumed, an
        unexpected id whose produce records are missing may have been produced."""
        return {
            "lost_inflated_by_at_most": min(self.lost, self.consume_records_missing),
            "unexpected_inflated_by_at_most": min(self.unexpected, self.produce_records_missing),
        }

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), **self.ratios(), **self.inflation()}
