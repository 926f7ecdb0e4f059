"""The debug dashboard: latency, attempts, duplicates and retries per group, the collector."""

from __future__ import annotations

from msgtally.names import SLIKind, counter
from msgtally.slis.spec.model import Spec

from . import queries as q
from .panels import Format, Kind, Panel, Row, Target

TITLE = "Debug"
WHAT = (
    "End-to-end latency, attempts per message, duplicates and retries per group, unexpected "
    "and recovered ids, failed records by error class, and the collector itself: ingest rate, "
    "rejected requests, reconcile lag; the consumers' retry configurations audited."
)
QUANTILES = (0.5, 0.9, 0.99)


def rows(spec: Spec) -> list[Row]:
    pair = "{{stream}} / {{group}}"
    return [
        (
            Panel(
                Kind.TIMESERIES,
                "End-to-end latency percentiles",
                "First ok consume minus first produce of each id, from the "
                "msgtally_delivery_latency_seconds histogram (interpolated within buckets).",
                "s",
                tuple(
                    Target(q.latency_quantile(quantile), f"{pair} p{quantile * 100:g}")
                    for quantile in QUANTILES
                ),
                width=12,
                min=0,
            ),
            Panel(
                Kind.HEATMAP,
                "End-to-end latency distribution",
                "Ids per second by latency bucket, every selected stream and group.",
                "s",
                (Target(q.latency_heatmap(), "{{le}}", format=Format.HEATMAP),),
                width=12,
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "Delivery attempts per message",
                "Consume records (every delivery attempt) / produced ids: 1 when every message "
                "is delivered once.",
                "short",
                (Target(q.attempts_per_message(q.RATE), pair),),
                width=8,
                min=0,
                decimals=2,
            ),
            Panel(
                Kind.TIMESERIES,
                "Duplicate and retry ratio by group",
                "Duplicate deliveries / ok deliveries, and retried ids / produced ids.",
                "percentunit",
                (
                    Target(q.sli_ratio(SLIKind.DUPLICATES, q.RATE), f"{pair} duplicates"),
                    Target(q.sli_ratio(SLIKind.RETRIES, q.RATE), f"{pair} retries"),
                ),
                width=8,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Unexpected and recovered ids",
                "Unexpected: consumed, never produced (a producer without a shim, or produce "
                "records dropped or missing). Recovered: every produce indeterminate, consumed "
                "anyway.",
                "cps",
                (
                    Target(
                        q.tally(counter("unexpected"), q.RATE, fn="rate"), f"{pair} unexpected"
                    ),
                    Target(q.tally(counter("recovered"), q.RATE, fn="rate"), f"{pair} recovered"),
                ),
                width=8,
                min=0,
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "Auth and serialization errors",
                "Failed sends (produce) and deliveries (consume) per second whose class an "
                "on-call acts on at once: auth (a credential rotated, expired or refused: "
                "check the service's secret against the broker's users), serialization (a "
                "body that does not encode or decode: a producer deploy changed the format, "
                "or a consumer reads the wrong topic). docs/adapters.md: what each adapter "
                "counts in which class.",
                "cps",
                (Target(q.act_now_errors(), f"{pair} {{{{kind}}}} {{{{error}}}}"),),
                width=12,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Failed records by error class",
                "Failed sends and deliveries (outcome error or dead_letter) per second by "
                "class: auth, serialization, timeout, throttled (the broker pushed back), "
                "unavailable (down or unreachable), poison (consumers kept failing on it), "
                "other. Every selected stream and group; records without a class are in none.",
                "cps",
                (Target(q.errors_by_class(), "{{error}}"),),
                width=12,
                min=0,
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "Collector ingest rate",
                "Records of committed batches per second, every collector: accepted (stored) "
                "or ignored (a repeat a shim resent).",
                "cps",
                (Target(q.ingest_records(), "{{result}}"),),
                width=8,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Rejected requests",
                "POST /v1/records requests refused, nothing of them stored, by reason: "
                "malformed (400), too_large (413), invalid (422), store_unavailable (503: "
                "the shims retry).",
                "reqps",
                (Target(q.ingest_rejected(), "{{reason}}"),),
                width=8,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Messages in flight",
                "Produced ids not judged yet (no in-time delivery so far, deadline + settle not "
                "reached): in none of the other figures yet.",
                "short",
                (Target(q.in_flight(), pair),),
                width=8,
                min=0,
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "Reconcile lag",
                "Seconds since the last reconcile pass finished: figures are at most this old "
                "(plus the deadline and settle time of each id).",
                "s",
                (Target(q.reconcile_lag(), "since the last pass"),),
                width=12,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Reconcile backlog",
                "Records ingested and not yet reconciled.",
                "short",
                (Target(q.reconcile_backlog(), "records"),),
                width=12,
                min=0,
            ),
        ),
        (
            Panel(
                Kind.TABLE,
                "Retry configuration findings",
                "Consumer instances per finding of the audit of what they announce: drift "
                "(the group's instances disagree: all of them count), no_jitter (backoff "
                "without jitter: retry storms), acks_before_processing (at most once), "
                "no_retries (max attempts 1), contradicts_contract (against the stream's "
                "contract). The configurations: GET /v1/retry-configs on the collector.",
                "none",
                (Target(q.retry_findings(), instant=True, format=Format.TABLE),),
                width=12,
                hide_columns=("Time",),
            ),
            Panel(
                Kind.TIMESERIES,
                "Retry configuration findings over time",
                "The same counts over time: a finding that appears with a deploy is that "
                "deploy's configuration.",
                "short",
                (Target(q.retry_findings(), f"{pair} {{{{finding}}}}"),),
                width=12,
                min=0,
            ),
        ),
    ]
