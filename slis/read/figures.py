"""SLI figures per (stream, group): the counts, the ratios, the latency quantiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from msgtally.names import COUNT_FIELDS, INDICATORS, RatioIndicator, SLIKind
from msgtally.slis.spec.model import Spec
from msgtally.slis.spec.semantics import Semantics, breaches, observed_semantics

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
    # Produced ids not judged yet for the group (as of the engine's last tick):
    # every figure above counts judged ids only, so these are in none of them
    # yet; and how long the oldest of them has waited since its first produce.
    in_flight: int = 0
    in_flight_oldest_age_seconds: float | None = None
    # The delivery semantics the SLO spec declares for this stream and group, if any.
    contract: Semantics | None = None
    # Failed records by error class (msgtally.record.ERROR_CLASSES), counted per
    # record: {"produce": the stream's, "consume": this group's}. Running totals,
    # in figures over a window too (not windowed, as measurement loss).
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    # The receipt time of the oldest log row the store holds (the log is pruned
    # past --retain; None: the log is empty): the same for every pair.
    log_held_since: float | None = None
    # A group first seen after the log was pruned is back-filled from what the log
    # held then: its figures count the ids received from this time on (None: from
    # the start, the log was whole, or the group was no back-fill).
    backfilled_since: float | None = None

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

    def _counts(self) -> dict[str, int]:
        return {c: int(getattr(self, c)) for c in COUNT_FIELDS}

    def observed_semantics(self) -> str | None:
        """The strongest semantics these figures keep (None before anything is produced)."""
        return observed_semantics(self._counts())

    def contract_breaches(self) -> dict[str, int] | None:
        """Each breach the declared contract forbids, with its count (0: kept)."""
        if self.contract is None:
            return None
        return {b.value: n for b, n in breaches(self.contract, self._counts()).items()}

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            **self.ratios(),
            **self.inflation(),
            "observed_semantics": self.observed_semantics(),
            "contract_breaches": self.contract_breaches(),
        }


def with_contracts(slis: Sequence[SLI], spec: Spec | None) -> list[SLI]:
    """The figures with the contract the spec declares for each stream and group."""
    if spec is None:
        return list(slis)
    out = []
    for s in slis:
        contract = spec.contract_for(s.stream, s.group)
        out.append(replace(s, contract=contract.semantics if contract else None))
    return out
