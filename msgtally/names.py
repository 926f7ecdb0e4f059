"""The names every part of msgtally shares: tally counts, metric names, SLI kinds, rule names.

A leaf module: it imports nothing from msgtally, so the store, the exposition,
the rule generator and the dashboards read the same names without importing
each other. `INDICATORS` is the one definition of what each SLI kind counts:
the alert rules, their generated promtool tests, the dashboards, the OpenSLO
mapping and the report's ratios are all derived from it, so a new SLI kind is
one entry there (plus its tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

# The counts the engine keeps per (stream, group) (docs/definitions.md).
TALLY_FIELDS = (
    "produced",
    "delivered",
    "lost",
    "late",
    "recovered",
    "unexpected",
    "duplicated",
    "retried",
    "attempts",
    "dead_lettered",
    "consume_errors",
    "latency_count",
)
# The outcome counts (latency_count is the histogram's, not an outcome).
COUNT_FIELDS = tuple(f for f in TALLY_FIELDS if f != "latency_count")

# Tally column -> (metric name without `_total`, help): the counters of /metrics.
COUNTERS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "produced": ("msgtally_messages_produced", "Message ids acknowledged by the broker."),
        "delivered": ("msgtally_messages_delivered", "Produced ids consumed ok by the deadline."),
        "lost": ("msgtally_messages_lost", "Produced ids not consumed ok by the deadline."),
        "late": ("msgtally_messages_late", "Lost ids consumed ok after the deadline."),
        "duplicated": ("msgtally_messages_duplicated", "Ok deliveries beyond the first."),
        "retried": ("msgtally_messages_retried", "Ids sent or delivered more than once."),
        "attempts": ("msgtally_delivery_attempts", "Delivery attempts (consume records)."),
        "dead_lettered": ("msgtally_messages_dead_lettered", "Produced ids dead-lettered."),
        "unexpected": ("msgtally_messages_unexpected", "Ids consumed but never produced."),
        "recovered": ("msgtally_messages_recovered", "Indeterminate produces consumed anyway."),
        "consume_errors": ("msgtally_consume_errors", "Consume records with outcome error."),
    }
)
LATENCY = "msgtally_delivery_latency_seconds"
# The collector's other series (names without `_total`, as prometheus-client takes them).
RECORDS_DROPPED = "msgtally_records_dropped"
RECORDS_MISSING = "msgtally_records_missing"
IN_FLIGHT = "msgtally_messages_in_flight"
IN_FLIGHT_OLDEST = "msgtally_messages_in_flight_oldest_timestamp_seconds"
RECONCILE_RECORDS = "msgtally_reconcile_records"
BACKLOG = "msgtally_reconcile_backlog_records"
QUARANTINED = "msgtally_reconcile_quarantined_rows"
LAST_PASS = "msgtally_reconcile_last_pass_timestamp_seconds"
# Failed records by error class (msgtally.record.ERROR_CLASSES), labels stream, group, kind, error.
DELIVERY_ERRORS = "msgtally_delivery_errors"


# The receipt time of the oldest log row held (the log is pruned past --retain).
LOG_HELD_SINCE = "msgtally_log_held_since_timestamp_seconds"
INGEST_RECORDS = "msgtally_ingest_records"
INGEST_REJECTED = "msgtally_ingest_rejected"


def counter(column: str) -> str:
    """The series of a tally count: `lost` -> `msgtally_messages_lost_total`."""
    return COUNTERS[column][0] + "_total"


# Latency histogram bounds, seconds: the collector's default buckets, and so
# the thresholds a latency SLO may use without configuration.
DEFAULT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


def bucket_label(bound: float) -> str:
    """The `le` label of a bucket bound, as Prometheus clients write it."""
    return "+Inf" if bound == math.inf else repr(float(bound))


class SLIKind(StrEnum):
    """What counts as an error, and out of what: see INDICATORS."""

    DELIVERY = "delivery"
    DUPLICATES = "duplicates"
    LATENCY = "latency"
    RETRIES = "retries"


@dataclass(frozen=True)
class RatioIndicator:
    """errors / total, each a sum of tally counts (Pyrra's RatioIndicator)."""

    errors: tuple[str, ...]
    total: tuple[str, ...]
    # The report's name for errors / total.
    ratio: str
    # Counts that are the good events, where a counter of them exists (OpenSLO's `good`).
    good: tuple[str, ...] = ()


@dataclass(frozen=True)
class LatencyIndicator:
    """Deliveries slower than the SLO's threshold / deliveries, from the histogram.

    errors: `_count - _bucket{le=threshold}`; total: `_count`.
    """

    histogram: str = LATENCY


# Ok deliveries: the first in-time one, the late one, the recovered one, and every duplicate.
OK_DELIVERIES = ("delivered", "late", "recovered", "duplicated")

INDICATORS: Mapping[SLIKind, RatioIndicator | LatencyIndicator] = MappingProxyType(
    {
        SLIKind.DELIVERY: RatioIndicator(
            errors=("lost",), total=("produced",), ratio="loss_ratio", good=("delivered",)
        ),
        SLIKind.DUPLICATES: RatioIndicator(
            errors=("duplicated",), total=OK_DELIVERIES, ratio="duplicate_ratio"
        ),
        SLIKind.LATENCY: LatencyIndicator(),
        SLIKind.RETRIES: RatioIndicator(
            errors=("retried",), total=("produced",), ratio="retry_ratio"
        ),
    }
)

# What the generated Prometheus rules record and alert on.
SLI_RECORD = "msgtally:sli_error:ratio_rate"  # + the window, e.g. `5m`
OBJECTIVE_RECORD = "msgtally:slo_objective:ratio"
BUDGET_RECORD = "msgtally:slo_error_budget:ratio"
PERIOD_RECORD = "msgtally:slo_period:seconds"
PERIOD_BURN_RECORD = "msgtally:slo_period_burn_rate:ratio"
REMAINING_RECORD = "msgtally:slo_error_budget_remaining:ratio"
BURN_ALERT = "MsgtallyErrorBudgetBurn"
ABSENT_ALERT = "MsgtallySLIAbsent"
CONTRACT_ALERT = "MsgtallyDeliveryContractBreach"

# The retry-configuration audit (msgtally.slis.read.retry_audit): the gauge of instances
# with each finding per (stream, group), its findings in order, and the ticket that
# opens when a configuration contradicts the stream's delivery contract.
RETRY_FINDINGS = "msgtally_retry_config_findings"
FINDINGS = ("drift", "no_jitter", "acks_before_processing", "no_retries", "contradicts_contract")
CONTRADICTS_CONTRACT = "contradicts_contract"
RETRY_CONTRADICTION_ALERT = "MsgtallyRetryConfigContradiction"
