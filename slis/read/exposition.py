"""The tallies as Prometheus metrics, read from the store at every scrape.

Values come from what is stored, not from process memory, so they survive a
collector restart and agree between collectors behind a load balancer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from msgtally.ingest.intake.writer import log_ends
from msgtally.names import (
    BACKLOG,
    COUNTERS,
    DELIVERY_ERRORS,
    IN_FLIGHT,
    IN_FLIGHT_OLDEST,
    LAST_PASS,
    LATENCY,
    LOG_HELD_SINCE,
    QUARANTINED,
    RECONCILE_RECORDS,
    RECORDS_DROPPED,
    RECORDS_MISSING,
    RETRY_FINDINGS,
    bucket_label,
)
from msgtally.slis.spec.model import Spec
from msgtally.store.engine_facts import engine_facts
from msgtally.store.held import log_held_since
from msgtally.store.tables import latency_buckets, quarantine, tallies

from .query import read_drops, read_errors, read_in_flight, read_missing, summed_tallies
from .retry_configs import read_audit

LABELS = ("stream", "group")


def _le_value(label: str) -> float:
    return math.inf if label == "+Inf" else float(label)


class StoreCollector(Collector):
    """A prometheus-client collector over the store's tallies."""

    def __init__(self, store: Engine, bounds: Iterable[float], spec: Spec | None = None) -> None:
        self._engine = store
        self._bounds = tuple(bounds)
        self._spec = spec  # the contracts the retry audit holds configurations to

    def collect(self) -> Iterator[Metric]:
        with self._engine.connect() as conn:
            t = tallies
            query = summed_tallies().where(t.c.grp != "").order_by(t.c.stream, t.c.grp)
            rows = conn.execute(query).mappings().all()
            b = latency_buckets
            bucket_rows = conn.execute(
                select(b.c.stream, b.c.grp, b.c.le, func.sum(b.c["count"])).group_by(
                    b.c.stream, b.c.grp, b.c.le
                )
            ).all()
            in_flight = read_in_flight(conn)
            drops = read_drops(conn)
            missing = read_missing(conn)
            errors = read_errors(conn)
            facts = engine_facts(conn, log_ends(self._engine))
            aside = conn.execute(select(func.count()).select_from(quarantine)).scalar_one()
            audits = read_audit(conn, time.time(), self._spec)
            held = log_held_since(conn)

        for column, (name, doc) in COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=LABELS)
            for row in rows:
                family.add_metric((row["stream"], row["grp"]), int(row[column]))
            yield family

        per_key: dict[tuple[str, str], dict[str, int]] = {}
        for stream, grp, le, count in bucket_rows:
            per_key.setdefault((stream, grp), {})[le] = int(count)
        hist = HistogramMetricFamily(
            LATENCY, "First ok consume minus first produce, per produced id.", labels=LABELS
        )
        for row in rows:
            key = (row["stream"], row["grp"])
            counts = per_key.get(key, {})
            labels = sorted(
                {bucket_label(b) for b in self._bounds} | set(counts) | {"+Inf"}, key=_le_value
            )
            cumulative, buckets = 0, []
            for le in labels:
                cumulative += counts.get(le, 0)
                buckets.append((le, cumulative))
            hist.add_metric(key, buckets, float(row["latency_sum"]))
        yield hist

        dropped = CounterMetricFamily(
            RECORDS_DROPPED,
            "Records the shims dropped before sending: measurement loss, not message loss.",
            labels=(*LABELS, "kind"),
        )
        for (stream, kind, grp), n in sorted(drops.items()):
            dropped.add_metric((stream, grp, kind), n)
        yield dropped

        gaps = CounterMetricFamily(
            RECORDS_MISSING,
            "Records missing from the shims' numbering (seq), found by the collector: "
            "measurement loss, dead shims included.",
            labels=(*LABELS, "kind"),
        )
        for (stream, kind, grp), n in sorted(missing.items()):
            gaps.add_metric((stream, grp, kind), n)
        yield gaps

        failed = CounterMetricFamily(
            DELIVERY_ERRORS,
            "Failed records (outcome error or dead_letter) by error class, per record: a "
            "stream's produces (group \"\"), a group's consumes.",
            labels=(*LABELS, "kind", "error"),
        )
        for (stream, kind, grp, error), n in sorted(errors.items()):
            failed.add_metric((stream, grp, kind, error), n)
        yield failed

        flight = GaugeMetricFamily(
            IN_FLIGHT,
            "Produced ids not yet delivered whose deadline has not passed.",
            labels=LABELS,
        )
        oldest = GaugeMetricFamily(
            IN_FLIGHT_OLDEST,
            "First produce (unix seconds) of the oldest produced id not yet delivered nor "
            "judged: time() minus it is how long the oldest has waited.",
            labels=LABELS,
        )
        for f in in_flight:
            flight.add_metric((f.stream, f.group), f.n)
            if f.oldest is not None:
                oldest.add_metric((f.stream, f.group), f.oldest)
        yield flight
        yield oldest
        applied, repeated = facts.applied, facts.repeated
        engine_records = CounterMetricFamily(
            RECONCILE_RECORDS,
            "Records the engine applied: new, or a repeat of one it had (a resend).",
            labels=("result",),
        )
        engine_records.add_metric(("new",), applied - repeated)
        engine_records.add_metric(("repeat",), repeated)
        yield engine_records
        yield GaugeMetricFamily(
            BACKLOG,
            "Records ingested and not yet reconciled (on workers: the topic's messages past "
            "the partitions' committed offsets).",
            value=facts.backlog,
        )
        yield GaugeMetricFamily(
            QUARANTINED,
            "Log rows the engine set aside, their bodies rejected (msgtally quarantine list).",
            value=int(aside),
        )
        if held is not None:
            yield GaugeMetricFamily(
                LOG_HELD_SINCE,
                "The receipt time (unix seconds) of the oldest log row held: the log is pruned "
                "past --retain; a group first seen now is back-filled from this time on.",
                value=held,
            )
        if facts.last_pass is not None:
            yield GaugeMetricFamily(
                LAST_PASS,
                "The time a reconcile pass last finished (its `now`; on workers, the oldest "
                "of the partitions' last commits).",
                value=facts.last_pass,
            )
        findings = GaugeMetricFamily(
            RETRY_FINDINGS,
            "Consumer instances whose announced retry configuration has the finding "
            "(drift, no_jitter, acks_before_processing, no_retries, contradicts_contract).",
            labels=(*LABELS, "finding"),
        )
        for a in audits:
            for finding, n in a.findings.items():
                findings.add_metric((a.stream, a.group, finding), n)
        yield findings
