"""The shim (msgtally.ingest.shim.tally.Tally) against a real collector on a real socket, no mocks.

What every call records (the stored rows and the SLIs they add up to), the
msgtally_sdk_* counters, the OpenTelemetry spans and their links, bad
arguments (never raised, counted as dropped), and exact figures from a
threaded and an asyncio service.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select

from msgtally.ingest.intake import logbody
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.slis.read.query import read_drops
from msgtally.store.db import open_store
from msgtally.store.tables import log
from tests.conftest import LiveCollector
from tests.harness import logged

CONFIG = ReconcileConfig(deadline=5.0, settle=0.0)
FIELDS = ("produced", "delivered", "lost", "late", "recovered", "unexpected", "duplicated")
FIELDS += ("retried", "attempts", "dead_lettered", "consume_errors", "records_dropped")
FIELDS += ("produce_records_missing", "consume_records_missing")


# -- helpers shared with test_shipper.py ----------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Engine]:
    eng = open_store(f"sqlite:///{tmp_path / 'sdk.db'}")
    yield eng
    eng.dispose()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def stored(store: Engine, stream: str | None = None) -> list[dict[str, Any]]:
    """The distinct records the collector logged, in insertion-independent order."""
    return logged(store, stream)


def marks_logged(store: Engine) -> dict[tuple[str, str, str, str], int]:
    """The highest mark per sequence (producer, stream, kind, group) the shims
    sent; every request said its records are numbered per sequence."""
    with store.connect() as conn:
        bodies = [logbody.decode(bytes(b)) for (b,) in conn.execute(select(log.c.body))]
    assert all(body.marks is not None for body in bodies)
    out: dict[tuple[str, str, str, str], int] = {}
    for body in bodies:
        for producer, stream, kind, group, last in body.marks or ():
            key = (producer, stream, kind, group)
            out[key] = max(out.get(key, 0), last)
    return out


def settle_and_read(store: Engine, url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Reconcile past every deadline, then the collector's SLIs by (stream, group)."""
    reconcile(store, CONFIG, now=time.time() + 60)
    resp = httpx.get(f"{url}/v1/slis")
    resp.raise_for_status()
    return {(row["stream"], row["group"]): row for row in resp.json()}


def figures(row: dict[str, Any], **expected: int) -> tuple[dict[str, int], dict[str, int]]:
    """(got, want) over every count field; fields not given are expected 0."""
    got = {f: row[f] for f in FIELDS}
    return got, {f: expected.get(f, 0) for f in FIELDS}


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def total(registry: CollectorRegistry, name: str) -> float:
    return sum(samples(registry, name).values())


def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def traced_tally(
    stream: str, live: LiveCollector, registry: CollectorRegistry, provider: TracerProvider
) -> Tally:
    return Tally(
        stream,
        collector_url=live.url,
        registry=registry,
        tracer_provider=provider,
        flush_interval=0.05,
    )


# -- what each call records ---------------------------------------------------------


class Scenario:
    """One pass of every kind of call through a live collector."""

    def __init__(self, store: Engine) -> None:
        self.stream, self.other = unique("orders"), unique("refunds")
        self.registry = CollectorRegistry()
        provider, self.exporter = traced()
        with LiveCollector(store, CONFIG) as live:
            tally = Tally(
                self.stream,
                collector_url=live.url,
                system="rabbitmq",
                producer="svc-a",
                registry=self.registry,
                tracer_provider=provider,
                flush_interval=0.05,
            )
            self.headers: dict[str, Any] = {}
            g = "billing"
            # m1: produced, consumed once with the producer's headers.
            self.headers["m1"] = h1 = dict(tally.produced("m1"))
            tally.consumed("m1", group=g, headers=h1)
            # m2: an indeterminate send, then an acked retry; delivered twice.
            tally.produced("m2", outcome="error")
            h2 = tally.produced("m2", attempt=2, headers={"x-app": "kept"})
            self.headers["m2"] = dict(h2)
            with tally.processing("m2", group=g, headers=h2):
                pass
            with tally.processing("m2", group=g, attempt=2, headers=h2):
                pass
            # m3: sending() ok; the first processing raises, the redelivery works.
            with tally.sending("m3") as s3:
                self.headers["m3"] = h3 = dict(s3.headers)
            with pytest.raises(ValueError), tally.processing("m3", group=g, headers=h3):
                raise ValueError("handler failed")
            with tally.processing("m3", group=g, attempt=2, headers=h3):
                pass
            # m4: the publish raises: indeterminate, never consumed.
            with pytest.raises(ConnectionError), tally.sending("m4"):
                raise ConnectionError("broker gone")
            # m5: dead-lettered; m6: failed() without raising, then ok.
            tally.produced("m5")
            with tally.processing("m5", group=g) as d5:
                d5.dead_letter()
            tally.produced("m6")
            with tally.processing("m6", group=g) as d6:
                d6.failed()
            tally.consumed("m6", group=g, attempt=2)
            # m7: lost. m8: consumed, never produced.
            tally.produced("m7")
            tally.consumed("m8", group=g)
            # Another stream per call, another group.
            tally.produced("r1", stream=self.other)
            tally.consumed("r1", stream=self.other, group="audit", outcome="dead_letter")
            assert tally.flush(10)
            self.rows = stored(store)
            self.marks = marks_logged(store)
            self.slis = settle_and_read(store, live.url)
            tally.close()
        self.instance = tally.instance
        self.spans = self.exporter.get_finished_spans()


@pytest.fixture
def scenario(store: Engine) -> Scenario:
    return Scenario(store)


def test_every_call_stores_the_right_records(scenario: Scenario) -> None:
    s, o = scenario.stream, scenario.other
    got = [
        (r["stream"], r["kind"], r["message_id"], r["group"], r["attempt"], r["outcome"])
        for r in scenario.rows
    ]
    assert sorted(got) == sorted(
        [
            (s, "produce", "m1", "", 1, "ok"),
            (s, "consume", "m1", "billing", 1, "ok"),
            (s, "produce", "m2", "", 1, "error"),
            (s, "produce", "m2", "", 2, "ok"),
            (s, "consume", "m2", "billing", 1, "ok"),
            (s, "consume", "m2", "billing", 2, "ok"),
            (s, "produce", "m3", "", 1, "ok"),
            (s, "consume", "m3", "billing", 1, "error"),
            (s, "consume", "m3", "billing", 2, "ok"),
            (s, "produce", "m4", "", 1, "error"),
            (s, "produce", "m5", "", 1, "ok"),
            (s, "consume", "m5", "billing", 1, "dead_letter"),
            (s, "produce", "m6", "", 1, "ok"),
            (s, "consume", "m6", "billing", 1, "error"),
            (s, "consume", "m6", "billing", 2, "ok"),
            (s, "produce", "m7", "", 1, "ok"),
            (s, "consume", "m8", "billing", 1, "ok"),
            (o, "produce", "r1", "", 1, "ok"),
            (o, "consume", "r1", "audit", 1, "dead_letter"),
        ]
    )
    # Every record names the shim instance (headed by the name given) and its
    # number in the instance's sequence for its (stream, kind, group), from 1.
    assert scenario.instance.startswith("svc-a/")
    assert {r["producer"] for r in scenario.rows} == {scenario.instance}
    seqs: dict[tuple[str, str, str], list[int]] = {}
    for r in scenario.rows:
        seqs.setdefault((r["stream"], r["kind"], r["group"]), []).append(r["seq"])
    assert {key: sorted(n) for key, n in seqs.items()} == {
        (s, "produce", ""): list(range(1, 9)),
        (s, "consume", "billing"): list(range(1, 10)),
        (o, "produce", ""): [1],
        (o, "consume", "audit"): [1],
    }
    # The requests' high-water marks: the last number given in each sequence.
    assert scenario.marks == {
        (scenario.instance, *key): max(n) for key, n in seqs.items()
    }
    # Record ids: unique, instance:n, so a resend is recognised.
    ids = [r["record_id"] for r in scenario.rows]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(scenario.instance + ":") for i in ids)
    # Every record carries the ids of its span.
    assert all(len(r["trace_id"]) == 32 and len(r["span_id"]) == 16 for r in scenario.rows)
    assert all(abs(r["ts"] - time.time()) < 300 for r in scenario.rows)
    # Headers: the message id and a W3C traceparent; the caller's headers kept.
    for mid, headers in scenario.headers.items():
        assert headers[MESSAGE_ID_HEADER] == mid
        assert headers["traceparent"].startswith("00-")
    assert scenario.headers["m2"]["x-app"] == "kept"


def test_every_call_adds_up_to_the_slis(scenario: Scenario) -> None:
    s, o = scenario.stream, scenario.other
    assert set(scenario.slis) >= {(s, "billing"), (o, "audit")}
    got, want = figures(scenario.slis[(s, "billing")])
    # Acked: m1 m2 m3 m5 m6 m7 (m4 only indeterminate). Delivered: m1 m2 m3 m6.
    # Lost: m5 (dead-lettered, no ok consume) and m7. Duplicated: m2's second ok.
    # Retried: m2 (send attempt 2), m3 and m6 (delivery attempt 2).
    # Attempts: every consume of a produced id: m1 1, m2 2, m3 2, m5 1, m6 2.
    # Consume errors: m3 and m6's first deliveries.
    want.update(
        produced=6,
        delivered=4,
        lost=2,
        unexpected=1,
        duplicated=1,
        retried=3,
        attempts=8,
        dead_lettered=1,
        consume_errors=2,
    )
    assert got == want
    got, want = figures(
        scenario.slis[(o, "audit")], produced=1, lost=1, attempts=1, dead_lettered=1
    )
    assert got == want


def test_counters_count_every_call(scenario: Scenario) -> None:
    s, o = scenario.stream, scenario.other
    reg = scenario.registry
    assert samples(reg, "msgtally_sdk_produced_total") == {
        (("outcome", "ok"), ("stream", s)): 6,
        (("outcome", "error"), ("stream", s)): 2,
        (("outcome", "ok"), ("stream", o)): 1,
    }
    assert samples(reg, "msgtally_sdk_consumed_total") == {
        (("group", "billing"), ("outcome", "ok"), ("stream", s)): 6,
        (("group", "billing"), ("outcome", "error"), ("stream", s)): 2,
        (("group", "billing"), ("outcome", "dead_letter"), ("stream", s)): 1,
        (("group", "audit"), ("outcome", "dead_letter"), ("stream", o)): 1,
    }
    assert total(reg, "msgtally_sdk_records_shipped_total") == len(scenario.rows) == 19
    assert total(reg, "msgtally_sdk_records_dropped_total") == 0


def test_spans_follow_the_messaging_conventions(scenario: Scenario) -> None:
    s = scenario.stream
    spans = scenario.spans
    assert len(spans) == len(scenario.rows)
    by_span_id = {span.context.span_id: span for span in spans if span.context}
    for row in scenario.rows:  # each record names its own span
        span = by_span_id[int(row["span_id"], 16)]
        assert span.context is not None
        assert format(span.context.trace_id, "032x") == row["trace_id"]
        attrs = dict(span.attributes or {})
        assert attrs["messaging.system"] == "rabbitmq"
        assert attrs["messaging.destination.name"] == row["stream"]
        assert attrs["messaging.message.id"] == row["message_id"]
        if row["kind"] == "produce":
            assert span.kind is SpanKind.PRODUCER
            assert attrs["messaging.operation.type"] == "send"
            assert "messaging.consumer.group.name" not in attrs
        else:
            assert span.kind is SpanKind.CONSUMER
            assert attrs["messaging.operation.type"] == "process"
            assert attrs["messaging.consumer.group.name"] == row["group"]
            assert attrs["msgtally.attempt"] == row["attempt"]
        failed = row["outcome"] != "ok"
        assert (span.status.status_code is StatusCode.ERROR) == failed
    # Consumer spans link to the producer span whose context went in the headers.
    for mid, headers in scenario.headers.items():
        _, trace_hex, span_hex, _ = headers["traceparent"].split("-")
        producer = by_span_id[int(span_hex, 16)]
        assert producer.kind is SpanKind.PRODUCER
        consumers = [
            sp
            for sp in spans
            if sp.kind is SpanKind.CONSUMER
            and (sp.attributes or {}).get("messaging.message.id") == mid
            and (sp.attributes or {}).get("messaging.destination.name") == s
        ]
        assert consumers
        for consumer in consumers:
            assert [(lk.context.trace_id, lk.context.span_id) for lk in consumer.links] == [
                (int(trace_hex, 16), int(span_hex, 16))
            ]
    # Without headers, no link; a handler's exception is recorded on its span.
    m6 = [sp for sp in spans if _is(sp, SpanKind.CONSUMER, "m6")]
    assert m6 and all(not sp.links for sp in m6)
    m3_failed = [sp for sp in spans if _is(sp, SpanKind.CONSUMER, "m3") and sp.events]
    assert [e.name for sp in m3_failed for e in sp.events] == ["exception"]


def _is(span: ReadableSpan, kind: SpanKind, mid: str) -> bool:
    return span.kind is kind and (span.attributes or {}).get("messaging.message.id") == mid


# -- bad arguments --------------------------------------------------------------------


def _bad_calls(t: Tally) -> list[tuple[str, Callable[[], object]]]:
    """Calls the shim refuses; each is one record dropped and counted."""

    def in_sending(mid: Any, **kw: Any) -> Callable[[], object]:
        def run() -> None:
            with t.sending(mid, **kw):
                pass

        return run

    def in_processing(mid: Any, **kw: Any) -> Callable[[], object]:
        def run() -> None:
            with t.processing(mid, **kw):
                pass

        return run

    def failing(error: Any, **kw: Any) -> Callable[[], object]:
        def run() -> None:
            with t.processing("m", group="g", **kw) as delivery:
                delivery.failed(error)

        return run

    long = "x" * 257
    return [
        ("id None", lambda: t.produced(None)),  # type: ignore[arg-type]
        ("id int", lambda: t.produced(42)),  # type: ignore[arg-type]
        ("id empty", lambda: t.produced("")),
        ("id too long", lambda: t.produced(long)),
        ("id bytes", lambda: t.consumed(b"m", group="g")),  # type: ignore[arg-type]
        ("stream too long", lambda: t.produced("m", stream=long)),
        ("produce outcome dead_letter", lambda: t.produced("m", outcome="dead_letter")),
        ("produce outcome unknown", lambda: t.produced("m", outcome="maybe")),
        ("produce outcome unhashable", lambda: t.produced("m", outcome=["ok"])),  # type: ignore[arg-type]
        ("consume outcome unknown", lambda: t.consumed("m", group="g", outcome="lost")),
        ("group empty", lambda: t.consumed("m", group="")),
        ("group None", lambda: t.consumed("m", group=None)),  # type: ignore[arg-type]
        ("group too long", lambda: t.consumed("m", group=long)),
        ("sending id None", in_sending(None)),
        ("sending stream too long", in_sending("m", stream=long)),
        ("processing id empty", in_processing("", group="g")),
        ("processing group int", in_processing("m", group=7)),
        ("error class unknown", lambda: t.produced("m", outcome="error", error="network")),
        ("error class on ok", lambda: t.consumed("m", group="g", error="auth")),
        ("error class unhashable", lambda: t.produced("m", outcome="error", error=["auth"])),  # type: ignore[arg-type]
        ("processing fails with an unknown class", failing("oops")),
    ]


def test_the_sending_handle_fails_without_raising_and_learns_a_late_id(store: Engine) -> None:
    """`failed()` makes a send indeterminate without an exception; an id known only
    after the send (a Kafka offset) is set on the handle; one never set is dropped."""
    stream = unique("sends")
    registry = CollectorRegistry()
    provider, exporter = traced()
    with LiveCollector(store, CONFIG) as live:
        tally = traced_tally(stream, live, registry, provider)
        with tally.sending("s1", attempt=2) as s1:
            assert s1.headers[MESSAGE_ID_HEADER] == "s1"
            s1.failed()  # e.g. the broker did not confirm in time
        with tally.sending(None) as s2:
            assert MESSAGE_ID_HEADER not in s2.headers
            traceparent = s2.headers["traceparent"]
            s2.message_id = f"{stream}:0:42"
        with tally.sending(None):
            pass  # the id never came: nothing to report it under
        assert tally.flush(10)
        rows = stored(store, stream)
        tally.close()
    assert [(r["message_id"], r["attempt"], r["outcome"]) for r in rows] == [
        ("s1", 2, "error"),
        (f"{stream}:0:42", 1, "ok"),
    ]
    spans = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["s1", f"{stream}:0:42"]
    assert spans["s1"].status.status_code == StatusCode.ERROR
    late = spans[f"{stream}:0:42"].context
    assert traceparent.split("-")[1:3] == [f"{late.trace_id:032x}", f"{late.span_id:016x}"]
    assert rows[1]["span_id"] == f"{late.span_id:016x}"
    dropped = samples(registry, "msgtally_sdk_records_dropped_total")
    assert dropped == {(("group", ""), ("kind", "produce"), ("stream", stream)): 1.0}


def test_failures_carry_their_class(store: Engine) -> None:
    """An exception out of a `sending` or `processing` block is classified; a
    class given is kept; a record without one has none; all counted exactly."""
    stream = unique("classes")
    with LiveCollector(store, CONFIG) as live:
        tally = Tally(stream, collector_url=live.url, registry=CollectorRegistry(),
                      tracing=False, flush_interval=0.05)  # fmt: skip
        with pytest.raises(TimeoutError), tally.sending("p1"):
            raise TimeoutError("no confirm")
        with tally.sending("p2") as sending:
            sending.failed("throttled")
        tally.produced("p3", outcome="error")  # not classified
        tally.produced("p4")
        for mid, exc in (("p1", _json_error()), ("p2", ValueError("a bug")),
                         ("p4", _wrapped(ConnectionRefusedError()))):  # fmt: skip
            with pytest.raises(type(exc)), tally.processing(mid, group="g"):
                raise exc
        with tally.processing("p3", group="g") as delivery:
            delivery.dead_letter("poison")
        with tally.processing("p4", group="g", attempt=2) as delivery:
            delivery.failed("auth")
            delivery.dead_letter()  # the class of the failure stays
        tally.consumed("p1", group="g", attempt=2, outcome="error", error="auth")
        tally.consumed("p2", group="g", attempt=2)
        assert tally.flush(10)
        rows = stored(store, stream)
        slis = settle_and_read(store, live.url)
        tally.close()
    got = {(r["kind"], r["message_id"], r["attempt"]): (r["outcome"], r["error"]) for r in rows}
    assert got == {
        ("produce", "p1", 1): ("error", "timeout"),
        ("produce", "p2", 1): ("error", "throttled"),
        ("produce", "p3", 1): ("error", None),
        ("produce", "p4", 1): ("ok", None),
        ("consume", "p1", 1): ("error", "serialization"),
        ("consume", "p2", 1): ("error", "other"),
        ("consume", "p4", 1): ("error", "unavailable"),
        ("consume", "p3", 1): ("dead_letter", "poison"),
        ("consume", "p4", 2): ("dead_letter", "auth"),
        ("consume", "p1", 2): ("error", "auth"),
        ("consume", "p2", 2): ("ok", None),
    }
    errors = slis[(stream, "g")]["errors"]
    assert {k: n for k, n in errors["produce"].items() if n} == {"timeout": 1, "throttled": 1}
    assert {k: n for k, n in errors["consume"].items() if n} == {
        "serialization": 1, "other": 1, "unavailable": 1, "poison": 1, "auth": 2,
    }  # fmt: skip


def _json_error() -> Exception:
    try:
        json.loads("{")
    except ValueError as exc:
        return exc
    raise AssertionError("decoded")


def _wrapped(cause: BaseException) -> Exception:
    try:
        raise RuntimeError("handler failed") from cause
    except RuntimeError as exc:
        return exc


def test_bad_arguments_never_raise_and_are_counted(store: Engine) -> None:
    registry = CollectorRegistry()
    provider, _ = traced()
    with LiveCollector(store, CONFIG) as live:
        tally = Tally(
            "bad-args",
            collector_url=live.url,
            registry=registry,
            tracer_provider=provider,
            flush_interval=0.05,
        )
        no_stream = Tally(collector_url=live.url, registry=registry, tracing=False)
        calls = _bad_calls(tally)
        calls.append(("no stream anywhere", lambda: no_stream.produced("m")))
        for i, (name, call) in enumerate(calls):
            tally.produced(f"good-{i}")  # valid records around every bad call
            result = call()
            if isinstance(result, dict):  # produced(): no message id for a refused call
                assert MESSAGE_ID_HEADER not in result, name
        # Attempts that are not positive integers are coerced to 1, not dropped.
        tally.produced("coerced-0", attempt=0)
        tally.produced("coerced-str", attempt="2")  # type: ignore[arg-type]
        tally.consumed("coerced-bool", group="g", attempt=True)
        assert tally.flush(10) and no_stream.flush(10)
        rows = stored(store)
        tally.close()
        no_stream.close()
    assert total(registry, "msgtally_sdk_records_dropped_total") == len(calls)
    # The collector learns of every drop too, names it could not take included.
    with store.connect() as conn:
        drops = read_drops(conn)
    assert sum(drops.values()) == len(calls)
    assert drops[("(invalid)", "produce", "")] == 3  # stream too long (2), none at all
    assert drops[("bad-args", "consume", "(invalid)")] == 4  # empty, None, long, int
    assert sorted(r["message_id"] for r in rows) == sorted(
        [f"good-{i}" for i in range(len(calls))] + ["coerced-0", "coerced-str", "coerced-bool"]
    )
    assert {r["message_id"]: r["attempt"] for r in rows if r["message_id"].startswith("co")} == {
        "coerced-0": 1,
        "coerced-str": 1,
        "coerced-bool": 1,
    }


# Calls that once raised into the host, or whose record poisoned its whole
# batch at the collector: each is refused at the call (counted as dropped) or
# stored, never raised, and never costs other records.


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda t: t.produced("m", stream=123),
            id="stream-int",
        ),
        pytest.param(
            lambda t: t.consumed("m", group="g", stream=["s"]),
            id="stream-list",
        ),
        pytest.param(
            lambda t: t.produced("m", headers=["not", "a", "mapping"]),
            id="produce-headers-list",
        ),
        pytest.param(
            lambda t: t.consumed("m", group="g", headers="traceparent"),
            id="consume-headers-str",
        ),
        pytest.param(
            lambda t: t.consumed("m", group="g", headers={"traceparent": 5}),
            id="consume-header-value-int",
        ),
        pytest.param(
            lambda t: t.produced("m", ts="yesterday"),
            id="ts-str",
        ),
        pytest.param(
            lambda t: t.produced("m", ts=math.nan),
            id="ts-nan",
        ),
        pytest.param(
            lambda t: t.consumed("m", group="g", ts=-1.0),
            id="ts-negative",
        ),
        pytest.param(
            lambda t: t.produced("m", attempt=2**64),
            id="attempt-above-int64",
        ),
        pytest.param(
            lambda t: t.produced("\ud800"),
            id="id-lone-surrogate",
        ),
    ],
)
def test_a_bad_argument_costs_only_its_own_record(
    store: Engine, call: Callable[[Tally], object]
) -> None:
    """The call returns, and every other record of the batch is stored."""
    registry = CollectorRegistry()
    with LiveCollector(store, CONFIG) as live:
        tally = Tally(
            "poison",
            collector_url=live.url,
            registry=registry,
            tracer_provider=TracerProvider(),
            batch_size=50,
        )
        for i in range(10):
            tally.produced(f"before-{i}")
        call(tally)
        for i in range(10):
            tally.produced(f"after-{i}")
        flushed = tally.flush(3)
        rows = stored(store)
        tally.close(timeout=0.5)
    good = {r["message_id"] for r in rows} - {"m", "\ud800"}
    assert flushed
    assert good == {f"{w}-{i}" for w in ("before", "after") for i in range(10)}
    # The bad record itself: stored (repaired) or dropped and counted, never both.
    assert len(rows) - len(good) + total(registry, "msgtally_sdk_records_dropped_total") == 1


# -- services ---------------------------------------------------------------------------


def test_a_threaded_service_gives_exact_figures(store: Engine) -> None:
    stream = unique("threads")
    registry = CollectorRegistry()
    threads_n, per_thread = 8, 500
    with LiveCollector(store, CONFIG) as live:
        tally = Tally(
            stream,
            collector_url=live.url,
            registry=registry,
            tracer_provider=TracerProvider(),  # spans made, not exported
            batch_size=200,
            flush_interval=0.05,
        )
        start = threading.Barrier(threads_n)

        def work(t: int) -> None:
            start.wait()
            for i in range(per_thread):
                mid = f"t{t}-{i}"
                headers = tally.produced(mid)
                if i % 10 == 0:  # a failed first delivery, then the redelivery
                    with tally.processing(mid, group="g", headers=headers) as d:
                        d.failed()
                    tally.consumed(mid, group="g", attempt=2, headers=headers)
                elif i % 10 == 1:  # processed twice: a duplicate
                    tally.consumed(mid, group="g", headers=headers)
                    tally.consumed(mid, group="g", headers=headers)
                elif i % 10 == 2:  # lost
                    pass
                else:
                    tally.consumed(mid, group="g", headers=headers)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert tally.flush(30)
        rows = stored(store, stream)
        slis = settle_and_read(store, live.url)
        tally.close()
    n = threads_n * per_thread
    tenth = n // 10
    consumes = 2 * tenth + 2 * tenth + 7 * tenth
    assert len(rows) == n + consumes
    ids = [r["record_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    # One gapless sequence per (stream, kind, group) across threads.
    assert sorted(r["seq"] for r in rows if r["kind"] == "produce") == list(range(1, n + 1))
    assert sorted(r["seq"] for r in rows if r["kind"] == "consume") == list(
        range(1, consumes + 1)
    )
    got, want = figures(
        slis[(stream, "g")],
        produced=n,
        delivered=n - tenth,
        lost=tenth,
        duplicated=tenth,
        retried=tenth,
        attempts=consumes,
        consume_errors=tenth,
    )
    assert got == want
    assert total(registry, "msgtally_sdk_records_shipped_total") == len(rows)
    assert total(registry, "msgtally_sdk_records_dropped_total") == 0


def test_an_asyncio_service_gives_exact_figures(store: Engine) -> None:
    stream = unique("aio")
    registry = CollectorRegistry()
    provider, exporter = traced()
    n = 300
    with LiveCollector(store, CONFIG) as live:
        tally = traced_tally(stream, live, registry, provider)
        queue: asyncio.Queue[tuple[str, dict[str, str], int]] = asyncio.Queue()
        handled: Counter[str] = Counter()

        async def producer() -> None:
            for i in range(n):
                mid = f"a{i}"
                headers = dict(tally.produced(mid))
                await queue.put((mid, headers, 1))
                await asyncio.sleep(0)

        async def consumer() -> None:
            while True:
                mid, headers, attempt = await queue.get()
                try:
                    with tally.processing(
                        mid, group="aio", attempt=attempt, headers=headers
                    ) as delivery:
                        await asyncio.sleep(0)  # the handler awaits mid-processing
                        if int(mid[1:]) % 7 == 0 and attempt == 1:
                            raise RuntimeError("transient")
                        if int(mid[1:]) % 11 == 0:
                            delivery.dead_letter()
                        handled[mid] += 1
                except RuntimeError:
                    await queue.put((mid, headers, attempt + 1))  # redelivered
                finally:
                    queue.task_done()

        async def main() -> None:
            consumers = [asyncio.create_task(consumer()) for _ in range(5)]
            await producer()
            await queue.join()
            for c in consumers:
                c.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)

        asyncio.run(main())
        assert tally.flush(10)
        slis = settle_and_read(store, live.url)
        tally.close()
    sevens = len([i for i in range(n) if i % 7 == 0])
    elevens = len([i for i in range(n) if i % 11 == 0])
    assert sum(handled.values()) == n
    got, want = figures(
        slis[(stream, "aio")],
        produced=n,
        delivered=n - elevens,
        lost=elevens,
        dead_lettered=elevens,
        retried=sevens,
        attempts=n + sevens,
        consume_errors=sevens,
    )
    assert got == want
    # Every consumer span (made inside the coroutines) links to its producer span.
    spans = exporter.get_finished_spans()
    producers = {
        (sp.attributes or {})["messaging.message.id"]: sp
        for sp in spans
        if sp.kind is SpanKind.PRODUCER
    }
    consumers = [sp for sp in spans if sp.kind is SpanKind.CONSUMER]
    assert len(consumers) == n + sevens
    for sp in consumers:
        ctx = producers[(sp.attributes or {})["messaging.message.id"]].context
        assert ctx is not None
        assert [lk.context.span_id for lk in sp.links] == [ctx.span_id]


def test_a_named_producer_heads_the_instance_id_of_each_process() -> None:
    tally = Tally("s", producer="checkout", tracing=False, registry=CollectorRegistry())
    assert tally.instance.startswith("checkout/") and tally.instance != "checkout"
    assert len(tally.instance) + len(":18446744073709551615") <= 256  # a record id fits
    tally.close(0)
    # A name the records could not carry is a mistake to say at once.
    for bad in ("", "x" * 129, "a\x00b"):
        with pytest.raises(ValueError, match="producer"):
            Tally("s", producer=bad, tracing=False, registry=CollectorRegistry())
