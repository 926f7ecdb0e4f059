"""The proof of OTLP traces in: the official OpenTelemetry SDK and exporters
(OTLP/HTTP protobuf with gzip, OTLP/gRPC with gzip) against a real collector
on 127.0.0.1, on both stores. Services on four attribute conventions, and a
service on the shim, produce and consume a history with known loss,
duplicates, retries, dead letters, late and unexpected deliveries; the SLIs
and discrepancy reports equal the oracle's exactly. Every export is sent a
second time (an exporter's retry) and counts once."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, Tracer
from sqlalchemy import Engine

from msgtally.ingest.shim.tally import Tally
from msgtally.oracle import Record, error_counts, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from tests.conftest import LiveCollector
from tests.harness import assert_discrepancies, assert_figures, errors, figures, repeats
from tests.otlp_support import T_NS

T = T_NS / 1e9


@dataclass(frozen=True)
class Event:
    """One produce or consume, as a span ending `at_ms` after T_NS."""

    stream: str
    kind: str
    mid: str
    at_ms: int
    group: str = ""
    attempt: int = 1
    outcome: str = "ok"
    error_type: str | None = None  # the span's error.type, on the conventions that set it

    def record(self) -> Record:
        ts = (T_NS + self.at_ms * 10**6) / 1e9  # what the collector reads: end / 1e9
        error = ERROR_TYPES[self.error_type] if self.error_type else None
        return Record(self.stream, self.kind, self.mid, ts, self.group, self.attempt, self.outcome,
                      error=error)  # fmt: skip


# error.type values as instrumentations write them, and the class each is counted in
ERROR_TYPES = {
    "org.apache.kafka.common.errors.TimeoutException": "timeout",
    "SaslAuthenticationException": "auth",
    "builtins.UnicodeDecodeError": "serialization",
    "com.fasterxml.jackson.core.JsonParseException": "serialization",
    "RESOURCE_EXHAUSTED": "throttled",
    "503": "unavailable",
    "java.lang.IllegalStateException": "other",
}


# stream -> the groups consuming it
GROUPS = {
    "orders": ("billing", "shipping"),
    "payments": ("ledger",),
    "invoices": ("archive",),
    "refunds": ("audit",),
    "mixed": ("fulfilment",),  # produced by the shim, consumed over OTLP
}


def history(seed: int, ids: int = 40) -> list[Event]:
    """Produces and consumes per id and group, with known faults."""
    rnd = random.Random(seed)
    out: list[Event] = []
    for stream, groups in GROUPS.items():
        for i in range(ids):
            mid, t0 = f"{stream}-{i}", i * 200
            u = rnd.random()
            if u < 0.06:  # indeterminate: the send failed, nothing acknowledged
                out.append(Event(stream, "produce", mid, t0, outcome="error"))
            elif u < 0.15:  # a retried send
                out += [Event(stream, "produce", mid, t0, outcome="error"),
                        Event(stream, "produce", mid, t0 + 50, attempt=2)]  # fmt: skip
            else:
                out.append(Event(stream, "produce", mid, t0))
            for g in groups:
                out += _deliveries(stream, mid, g, t0 + 60, rnd)
        for i in range(2):  # consumed, never produced
            out.append(Event(stream, "consume", f"{stream}-u{i}", 5000 + i, groups[0]))
    types = random.Random(seed + 1)  # apart: the faults above stay those of the seed
    return [_with_error_type(e, types) for e in out]


def _with_error_type(ev: Event, rnd: random.Random) -> Event:
    """The failures of the conventions that say why (current, Pub/Sub) carry error.type."""
    if ev.outcome == "ok" or ev.stream not in ("orders", "payments"):
        return ev
    return replace(ev, error_type=rnd.choice(sorted(ERROR_TYPES)))


def _deliveries(stream: str, mid: str, g: str, t: int, rnd: random.Random) -> list[Event]:
    v = rnd.random()
    if v < 0.06:
        return []  # lost
    if v < 0.10:  # late: past the 300 s deadline
        return [Event(stream, "consume", mid, t + 305_000, g)]
    if v < 0.15:  # dead-lettered after a failed delivery
        return [
            Event(stream, "consume", mid, t, g, outcome="error"),
            Event(stream, "consume", mid, t + 100, g, attempt=2, outcome="dead_letter"),
        ]
    if v < 0.23:  # retried: failed, then processed
        return [Event(stream, "consume", mid, t, g, outcome="error"),
                Event(stream, "consume", mid, t + 100, g, attempt=2)]  # fmt: skip
    if v < 0.26:  # failed, never again
        return [Event(stream, "consume", mid, t, g, outcome="error")]
    if v < 0.32:  # a duplicate delivery
        return [Event(stream, "consume", mid, t, g), Event(stream, "consume", mid, t + 1000, g)]
    return [Event(stream, "consume", mid, t + rnd.randrange(400), g)]


# --- the conventions: what each service's instrumentation writes -----------------------------

Emit = Callable[[Tracer, Event], None]


def _span(
    tracer: Tracer,
    ev: Event,
    name: str,
    kind: SpanKind,
    attrs: dict[str, Any],
    links: list[Link] | None = None,
    error: bool = False,
) -> None:
    end = T_NS + ev.at_ms * 10**6
    s = tracer.start_span(name, kind=kind, attributes=attrs, links=links, start_time=end - 10**6)
    if error:
        s.set_status(Status(StatusCode.ERROR))
    s.end(end_time=end)


def current(tracer: Tracer, ev: Event) -> None:
    """Current conventions (a Kafka client): send / process, msgtally's attempt and outcome."""
    attrs: dict[str, Any] = {"messaging.system": "kafka", "messaging.destination.name": ev.stream,
                             "messaging.message.id": ev.mid}  # fmt: skip
    if ev.error_type:
        attrs["error.type"] = ev.error_type
    if ev.kind == "produce":  # error.type alone says the send failed (no status set)
        attrs.update({"messaging.operation.type": "send", "msgtally.attempt": ev.attempt})
        _span(tracer, ev, f"send {ev.stream}", SpanKind.PRODUCER, attrs,
              error=ev.outcome == "error" and not ev.error_type)  # fmt: skip
        return
    attrs.update({"messaging.operation.type": "process", "messaging.consumer.group.name": ev.group,
                  "msgtally.attempt": ev.attempt})  # fmt: skip
    if ev.outcome == "dead_letter":
        attrs["msgtally.outcome"] = "dead_letter"
    _span(tracer, ev, f"process {ev.stream}", SpanKind.CONSUMER, attrs,
          error=ev.outcome != "ok")  # fmt: skip


def pubsub(tracer: Tracer, ev: Event) -> None:
    """Pub/Sub: publish on a CLIENT span, deliver with a subscription and delivery_attempt."""
    attrs: dict[str, Any] = {"messaging.system": "gcp_pubsub",
                             "messaging.destination.name": ev.stream,
                             "messaging.message.id": ev.mid}  # fmt: skip
    if ev.error_type:
        attrs["error.type"] = ev.error_type
    if ev.kind == "produce":
        attrs.update({"messaging.operation.type": "publish", "msgtally.attempt": ev.attempt})
        _span(tracer, ev, "publish", SpanKind.CLIENT, attrs, error=ev.outcome == "error")
        return
    attrs.update({"messaging.operation.type": "deliver",
                  "messaging.destination.subscription.name": ev.group,
                  "messaging.gcp_pubsub.message.delivery_attempt": ev.attempt})  # fmt: skip
    if ev.outcome == "dead_letter":
        attrs["msgtally.outcome"] = "dead_letter"
    _span(tracer, ev, f"{ev.stream} deliver", SpanKind.CONSUMER, attrs, error=ev.outcome != "ok")


def servicebus(tracer: Tracer, ev: Event) -> None:
    """Service Bus, deprecated names; a dead letter is the failed delivery's settlement."""
    attrs: dict[str, Any] = {"messaging.system": "servicebus", "messaging.destination": ev.stream,
                             "messaging.message.id": ev.mid}  # fmt: skip
    if ev.kind == "produce":
        attrs.update({"messaging.operation": "publish",
                      "messaging.servicebus.message.delivery_count": ev.attempt})  # fmt: skip
        _span(tracer, ev, f"{ev.stream} publish", SpanKind.PRODUCER, attrs,
              error=ev.outcome == "error")  # fmt: skip
        return
    attrs.update({"messaging.destination.subscription.name": ev.group,
                  "azure.servicebus.message.delivery_count": ev.attempt})  # fmt: skip
    if ev.outcome == "dead_letter":
        settle = {**attrs, "messaging.operation.type": "settle",
                  "messaging.operation.name": "dead_letter"}  # fmt: skip
        _span(tracer, ev, f"dead_letter {ev.stream}", SpanKind.CLIENT, settle)
        return
    _span(tracer, ev, f"process {ev.stream}", SpanKind.CONSUMER,
          {**attrs, "messaging.operation": "process"}, error=ev.outcome == "error")  # fmt: skip


def legacy(tracer: Tracer, ev: Event) -> None:
    """Conventions before operation types: the span kind says; Kafka's old group name."""
    attrs: dict[str, Any] = {"messaging.system": "kafka", "messaging.destination": ev.stream,
                             "messaging.message.id": ev.mid,
                             "messaging.servicebus.message.delivery_count": ev.attempt}  # fmt: skip
    if ev.kind == "produce":
        _span(tracer, ev, f"{ev.stream} send", SpanKind.PRODUCER, attrs,
              error=ev.outcome == "error")  # fmt: skip
        return
    attrs["messaging.kafka.consumer.group"] = ev.group
    if ev.outcome == "dead_letter":
        attrs["msgtally.outcome"] = "dead_letter"
    _span(tracer, ev, f"{ev.stream} process", SpanKind.CONSUMER, attrs, error=ev.outcome != "ok")


def fallback_group(tracer: Tracer, ev: Event) -> None:
    """A consumer with no group attribute: its service (resource service.name) is the group."""
    assert ev.kind == "consume"
    attrs: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": ev.stream,
        "messaging.message.id": ev.mid,
        "messaging.operation.type": "process",
        "msgtally.attempt": ev.attempt,
    }
    if ev.outcome == "dead_letter":
        attrs["msgtally.outcome"] = "dead_letter"
    _span(tracer, ev, f"process {ev.stream}", SpanKind.CONSUMER, attrs, error=ev.outcome != "ok")


STYLES: dict[str, Emit] = {
    "orders": current,
    "payments": pubsub,
    "invoices": servicebus,
    "refunds": legacy,
    "mixed": fallback_group,
}


def batch(tracer: Tracer, events: list[Event]) -> None:
    """One CONSUMER span processing several messages: a link per message."""
    ev = events[-1]
    links = [
        Link(SpanContext(0xABC, i + 1, is_remote=True), attributes={"messaging.message.id": e.mid})
        for i, e in enumerate(events)
    ]
    attrs = {"messaging.system": "kafka", "messaging.destination.name": ev.stream,
             "messaging.operation.type": "process", "messaging.batch.message_count": len(events),
             "messaging.consumer.group.name": ev.group}  # fmt: skip
    _span(tracer, ev, f"process {ev.stream}", SpanKind.CONSUMER, attrs, links)


def noise(tracer: Tracer) -> dict[str, int]:
    """Spans that are no delivery, or cannot be read; by what the collector makes of them."""
    ev = Event("orders", "consume", "orders-0", 70, "billing")
    _span(tracer, ev, "receive orders", SpanKind.CLIENT,
          {"messaging.system": "kafka", "messaging.destination.name": "orders",
           "messaging.operation.type": "receive", "messaging.message.id": "orders-0"})  # fmt: skip
    _span(tracer, ev, "GET /orders", SpanKind.SERVER, {"http.request.method": "GET"})
    _span(tracer, ev, "process orders", SpanKind.CONSUMER,
          {"messaging.system": "kafka", "messaging.destination.name": "orders"})  # no id
    _span(tracer, ev, "process orders", SpanKind.CONSUMER,
          {"messaging.system": "kafka", "messaging.destination.name": "orders",
           "messaging.message.id": "orders-0", "msgtally.attempt": "two"})  # fmt: skip
    too_long = {
        "messaging.system": "kafka",
        "messaging.destination.name": "orders",
        "messaging.message.id": "x" * 300,
        "messaging.consumer.group.name": "billing",
    }
    _span(tracer, ev, "process orders", SpanKind.CONSUMER, too_long)
    return {"not_a_delivery": 1, "not_messaging": 1, "no_message_id": 1, "rejected": 2}


# --- exporters --------------------------------------------------------------------------------


def exporter(transport: str, live: LiveCollector) -> SpanExporter:
    if transport == "http":
        return HttpExporter(endpoint=f"{live.url}/v1/traces", compression=Compression.Gzip)
    port = live.app.state.otlp_grpc.port
    return GrpcExporter(endpoint=f"127.0.0.1:{port}", insecure=True,
                        compression=grpc.Compression.Gzip)  # fmt: skip


@contextmanager
def service(
    name: str, transport: str, live: LiveCollector, kept: InMemorySpanExporter
) -> Iterator[TracerProvider]:
    """A service's SDK: batches of up to 512 spans to the collector; a copy kept."""
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter(transport, live),
                                                   max_export_batch_size=512))  # fmt: skip
    provider.add_span_processor(SimpleSpanProcessor(kept))
    try:
        yield provider
    finally:
        assert provider.force_flush(30_000)
        provider.shutdown()


def otlp_counts(live: LiveCollector, transport: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{live.url}/metrics").text.splitlines():
        if line.startswith("msgtally_otlp_spans_total{") and f'transport="{transport}"' in line:
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


def in_batches(events: list[Event]) -> tuple[list[Event], list[list[Event]]]:
    """Shipping's plain deliveries of orders, three at a time, processed in one
    span that ends with the last of them: (the history so, the batches)."""
    plain = [e for e in events if (e.stream, e.group, e.outcome, e.attempt) ==
             ("orders", "shipping", "ok", 1) and e.at_ms < 300_000]  # fmt: skip
    batches = [plain[i : i + 3] for i in range(0, len(plain) - 2, 3)]
    moved = {}
    for b in batches:
        for e in b:
            moved[e] = Event(e.stream, e.kind, e.mid, b[-1].at_ms, e.group)
    out = [moved.get(e, e) for e in events]
    return out, [[moved[e] for e in b] for b in batches]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sdk_spans_through_both_exporters_give_exact_slis(store: Engine, transport: str) -> None:
    events, batches = in_batches(history(seed=11))
    in_batch = {e for b in batches for e in b}
    assert len(batches) >= 5
    config = ReconcileConfig()
    kept = InMemorySpanExporter()
    with LiveCollector(store, config, otlp_grpc=("127.0.0.1", 0)) as live:
        shim_provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
        shim_provider.add_span_processor(SimpleSpanProcessor(exporter(transport, live)))
        tally = Tally("mixed", collector_url=live.url, tracer_provider=shim_provider,
                      flush_interval=0.05)  # fmt: skip
        with service("shop", transport, live, kept) as shop, \
                service("fulfilment", transport, live, kept) as fulfilment:  # fmt: skip
            tracer, fulfil = shop.get_tracer("app"), fulfilment.get_tracer("app")
            for ev in events:
                if ev.stream == "mixed" and ev.kind == "produce":  # the service on the shim
                    tally.produced(ev.mid, attempt=ev.attempt, outcome=ev.outcome,
                                   ts=ev.record().ts)  # fmt: skip
                elif ev.stream == "mixed":
                    fallback_group(fulfil, ev)
                elif ev not in in_batch:
                    STYLES[ev.stream](tracer, ev)
            for b in batches:
                batch(tracer, b)
            ignored = noise(tracer)
        assert tally.flush(10)
        tally.close()
        shim_provider.shutdown()
        spans = kept.get_finished_spans()
        # Every export again, as an exporter that retries after a lost answer.
        again = exporter(transport, live)
        for start in range(0, len(spans), 512):
            assert again.export(spans[start : start + 512]) == SpanExportResult.SUCCESS
        again.shutdown()
        counts = otlp_counts(live, transport)

    records = [e.record() for e in events]
    shim_records = sum(1 for e in events if e.stream == "mixed" and e.kind == "produce")
    recorded = len(spans) - sum(ignored.values())
    assert counts == {
        "recorded": 2 * recorded,
        "rejected": 2 * ignored["rejected"],
        "not_a_delivery": 2 * ignored["not_a_delivery"],
        "not_messaging": 2 * ignored["not_messaging"],
        "no_message_id": 2 * ignored["no_message_id"],
        "from_shim": shim_records,  # the shim's own spans: it sent their records itself
    }
    reconcile(store, config, now=T + 10_000)
    assert repeats(store) == len(records) - shim_records  # each resent record counted once
    want = oracle(records)
    assert_figures(figures(store), want)
    assert_discrepancies(store, want)
    # every failure's error.type counted in its class, once (the resent export counts nothing)
    classes = error_counts(records)
    assert errors(store) == classes
    assert {c for (_s, _k, _g, c) in classes} == set(ERROR_TYPES.values())
    # the history has every fault, on every stream's conventions
    got = figures(store)
    for stream in GROUPS:
        for name in ("lost", "late", "duplicated", "retried", "dead_lettered", "unexpected"):
            assert sum(f[name] for (s, _), f in got.items() if s == stream) > 0, (stream, name)
