"""RabbitMQ adapter end to end: the real broker on 127.0.0.1:5672, a real collector.

Every fault happens in the broker for real: nack+requeue (retries, counted by
the quorum queue's x-delivery-count), a consumer channel closed with
processed-but-unacked messages (redelivered: duplicates), an auto-ack
consumer that dies with messages the broker already forgot (loss), and
rejects routed by the broker through a real dead-letter exchange. The SLIs
the collector reports must equal what the test observed.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pika.exceptions import AMQPConnectionError, UnroutableError
from prometheus_client import CollectorRegistry

from msgtally.ingest.adapters.rabbitmq import RabbitPublisher, Received, body_id, tallied
from msgtally.ingest.db import open_engine
from msgtally.ingest.sdk import MESSAGE_ID_HEADER, Tally
from msgtally.reconcile import ReconcileConfig, reconcile
from tests.adapter_support import discrepancy_ids, sli_of
from tests.conftest import LiveCollector, service_unavailable

PARAMS = pika.ConnectionParameters(
    host="127.0.0.1",
    port=5672,
    credentials=pika.PlainCredentials("guest", "guest"),
    connection_attempts=1,
    socket_timeout=5,
)
FIGURES = ("produced", "delivered", "lost", "duplicated", "retried", "attempts", "dead_lettered")


@dataclass
class Env:
    tally: Tally
    live: LiveCollector
    engine: Any
    spans: InMemorySpanExporter
    registry: CollectorRegistry

    def settle(self, stream: str, group: str) -> dict[str, int]:
        """Flush the shim, reconcile past every deadline, read the collector's SLIs."""
        assert self.tally.flush(15), "shim did not flush"
        reconcile(self.engine, ReconcileConfig(deadline=5, settle=0), now=time.time() + 60)
        sli = sli_of(self.live.url, stream, group)
        return {k: sli[k] for k in (*FIGURES, "unexpected", "recovered")}

    def discrepancies(self, stream: str, group: str, kind: str) -> set[str]:
        return set(discrepancy_ids(self.live.url, stream, group, kind))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    engine = open_engine(f"sqlite:///{tmp_path}/x.db")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = CollectorRegistry()
    with LiveCollector(engine, ReconcileConfig(deadline=5, settle=0)) as live:
        tally = Tally(
            collector_url=live.url,
            system="rabbitmq",
            registry=registry,
            tracer_provider=provider,
            flush_interval=0.2,
        )
        try:
            yield Env(tally, live, engine, spans, registry)
        finally:
            tally.close()
    provider.shutdown()
    engine.dispose()


@pytest.fixture
def connect() -> Iterator[Callable[[], pika.BlockingConnection]]:
    """Opens connections to the broker; every one is closed afterwards."""
    opened: list[pika.BlockingConnection] = []

    def open_one() -> pika.BlockingConnection:
        conn = pika.BlockingConnection(PARAMS)
        opened.append(conn)
        return conn

    try:
        open_one()
    except AMQPConnectionError as exc:
        service_unavailable(f"RabbitMQ at 127.0.0.1:5672 unreachable: {exc!r}")
    yield open_one
    for conn in opened:
        if conn.is_open:
            conn.close()


@pytest.fixture
def names(connect: Callable[[], pika.BlockingConnection]) -> Iterator[Callable[[str], str]]:
    """Unique queue and exchange names, deleted after the test."""
    made: list[str] = []
    base = f"msgtally-test-{uuid.uuid4().hex[:10]}"

    def name(suffix: str) -> str:
        made.append(f"{base}{suffix}")
        return made[-1]

    yield name
    cleanup = connect()
    ch = cleanup.channel()
    for n in made:
        ch.queue_delete(n)
        ch.exchange_delete(n)
    cleanup.close()


def pump(conn: pika.BlockingConnection, done: Callable[[], bool], timeout: float = 20) -> None:
    """Run the consumer's I/O loop until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "broker did not deliver in time"
        conn.process_data_events(time_limit=0.05)


def quiet(conn: pika.BlockingConnection, seconds: float = 0.5) -> None:
    """Give the broker a chance to deliver anything else (it must not)."""
    conn.process_data_events(time_limit=seconds)


def figures(
    produced: int, ok: Counter[str], seen: list[tuple[str, int]], dead: set[str]
) -> dict[str, int]:
    """The expected SLIs from what the test observed."""
    top: dict[str, int] = {}
    for mid, attempt in seen:
        top[mid] = max(top.get(mid, 0), attempt)
    return {
        "produced": produced,
        "delivered": len(ok),
        "lost": produced - len(ok),
        "duplicated": sum(n - 1 for n in ok.values()),
        "retried": sum(1 for a in top.values() if a > 1),
        "attempts": len(seen),
        "dead_lettered": len(dead),
        "unexpected": 0,
        "recovered": 0,
    }


def queue_depth(ch: Any, queue: str) -> int:
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def test_retries_and_dead_letters_through_a_quorum_queue_and_a_real_dlx(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    queue, dlx, dlq = names(""), names(".dlx"), names(".dlq")
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(
        queue,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": dlx},
    )

    publisher = RabbitPublisher(ch, env.tally)
    ids = [publisher.publish(queue, f"order {i}".encode()) for i in range(12)]
    flaky = {ids[1], ids[5], ids[9]}  # raise on the first attempt only
    rejected = {ids[2], ids[7]}  # the handler dead-letters them
    poison = ids[10]  # raises every time: dead-lettered on attempt 3

    seen: list[tuple[str, int]] = []
    delivery_counts: dict[str, list[int]] = {}
    ok: Counter[str] = Counter()
    final: set[str] = set()

    def handle(msg: Received) -> None:
        seen.append((msg.message_id, msg.attempt))
        delivery_counts.setdefault(msg.message_id, []).append(
            msg.properties.headers.get("x-delivery-count")
        )
        if msg.message_id == poison:
            if msg.attempt >= 3:
                final.add(msg.message_id)
            raise ValueError("poison")
        if msg.message_id in flaky and msg.attempt == 1:
            raise ValueError("flaky")
        final.add(msg.message_id)
        if msg.message_id in rejected:
            msg.dead_letter()
            return
        ok[msg.message_id] += 1

    consumer = connect()
    cch = consumer.channel()
    cch.basic_qos(prefetch_count=20)
    cch.basic_consume(queue, tallied(env.tally, "billing", handle, max_attempts=3))
    pump(consumer, lambda: len(final) == len(ids))
    quiet(consumer)
    consumer.close()

    # The broker routed exactly the dead-lettered ids through the DLX.
    in_dlq: dict[str, str] = {}
    while True:
        method, props, _body = ch.basic_get(dlq, auto_ack=True)
        if method is None:
            break
        in_dlq[props.headers[MESSAGE_ID_HEADER]] = props.headers["x-death"][0]["reason"]
    assert in_dlq == {mid: "rejected" for mid in (*rejected, poison)}
    assert queue_depth(ch, queue) == 0

    # Attempts come from the quorum queue's x-delivery-count.
    for mid in flaky:
        assert [a for m, a in seen if m == mid] == [1, 2]
        assert delivery_counts[mid] == [None, 1]  # no header on a first push delivery
    assert [a for m, a in seen if m == poison] == [1, 2, 3]
    assert delivery_counts[poison] == [None, 1, 2]

    expected = figures(len(ids), ok, seen, {*rejected, poison})
    assert expected == {
        "produced": 12,
        "delivered": 9,
        "lost": 3,
        "duplicated": 0,
        "retried": 4,
        "attempts": 17,
        "dead_lettered": 3,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.settle(queue, "billing") == expected
    assert env.discrepancies(queue, "billing", "lost") == {*rejected, poison}

    # Trace context: every consumer span links to its message's producer span.
    finished = env.spans.get_finished_spans()
    sends = {
        s.attributes["messaging.message.id"]: s for s in finished if s.kind == SpanKind.PRODUCER
    }
    processes = [s for s in finished if s.kind == SpanKind.CONSUMER]
    assert set(sends) == set(ids)
    assert len(processes) == len(seen)
    for span in processes:
        send = sends[span.attributes["messaging.message.id"]]
        assert span.attributes["messaging.system"] == "rabbitmq"
        (link,) = span.links
        assert link.context.trace_id == send.context.trace_id
        assert link.context.span_id == send.context.span_id


def test_processed_then_channel_closed_before_ack_is_redelivered_as_duplicates(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    queue = names("")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue)  # classic queue: the redelivered flag is all there is
    publisher = RabbitPublisher(ch, env.tally)
    ids = [publisher.publish(queue, f"invoice {i}".encode()) for i in range(8)]

    seen: list[tuple[str, int]] = []
    ok: Counter[str] = Counter()
    tags: list[int] = []

    def handle(msg: Received) -> None:
        seen.append((msg.message_id, msg.attempt))
        ok[msg.message_id] += 1
        tags.append(msg.method.delivery_tag)

    # Consumer A processes all 8 and acks in batches: it acks the first 3
    # (multiple=True), then its channel closes before the next batch ack.
    first = connect()
    ach = first.channel()
    ach.basic_qos(prefetch_count=8)
    ach.basic_consume(queue, tallied(env.tally, "billing", handle, acks=False))
    pump(first, lambda: len(seen) == 8)
    ach.basic_ack(tags[2], multiple=True)
    ach.close()
    first.close()

    # Consumer B gets the 5 unacked ones again, flagged redelivered.
    redelivered: list[bool] = []

    def handle_b(msg: Received) -> None:
        redelivered.append(msg.method.redelivered)
        handle(msg)

    second = connect()
    bch = second.channel()
    bch.basic_consume(queue, tallied(env.tally, "billing", handle_b))
    pump(second, lambda: len(seen) == 13)
    quiet(second)
    assert redelivered == [True] * 5
    assert [a for _m, a in seen[8:]] == [2] * 5
    assert {m for m, _a in seen[8:]} == set(ids[3:])
    assert queue_depth(bch, queue) == 0

    expected = figures(len(ids), ok, seen, set())
    assert expected == {
        "produced": 8,
        "delivered": 8,
        "lost": 0,
        "duplicated": 5,
        "retried": 5,
        "attempts": 13,
        "dead_lettered": 0,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.settle(queue, "billing") == expected
    assert env.discrepancies(queue, "billing", "duplicated") == set(ids[3:])


class Crash(Exception):
    """The consumer process dies."""


def test_auto_ack_consumer_that_dies_loses_what_it_had_not_processed(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    queue = names("")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue)
    publisher = RabbitPublisher(ch, env.tally)
    ids = [publisher.publish(queue, f"event {i}".encode()) for i in range(10)]

    seen: list[tuple[str, int]] = []
    ok: Counter[str] = Counter()

    def handle(msg: Received) -> None:
        seen.append((msg.message_id, msg.attempt))
        ok[msg.message_id] += 1

    # auto_ack: the broker forgets a message as soon as it sends it. The
    # consumer processes 4, then dies on the 5th with the rest in its buffer.
    wrapped = tallied(env.tally, "audit", handle, acks=False)

    def dying(ch: Any, method: Any, props: Any, body: bytes) -> None:
        if len(seen) == 4:
            raise Crash
        wrapped(ch, method, props, body)

    doomed = connect()
    dch = doomed.channel()
    dch.basic_consume(queue, dying, auto_ack=True)
    with pytest.raises(Crash):
        pump(doomed, lambda: False)
    doomed.close()

    # A healthy consumer takes whatever the broker still has (maybe nothing).
    left = queue_depth(ch, queue)
    rescuer = connect()
    rch = rescuer.channel()
    rch.basic_consume(queue, tallied(env.tally, "audit", handle))
    pump(rescuer, lambda: len(seen) == 4 + left)
    quiet(rescuer)
    assert len(seen) == 4 + left

    lost = set(ids) - set(ok)
    assert len(lost) >= 1  # at least the message it died on, already auto-acked
    expected = figures(len(ids), ok, seen, set())
    assert expected["lost"] == len(lost) == 10 - 4 - left
    assert expected["duplicated"] == expected["retried"] == 0
    assert env.settle(queue, "audit") == expected
    assert env.discrepancies(queue, "audit", "lost") == lost


def test_fallback_ids_and_unconfirmed_publish(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    queue = names("")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue)
    ch.confirm_delivery()

    # A producer without msgtally: AMQP message_id only, or nothing at all;
    # it reports what it published itself, with the ids the consumer falls back to.
    foreign = {f"legacy-{uuid.uuid4().hex[:8]}-{n}": body for n, body in enumerate((b"a", b"b"))}
    for mid, body in foreign.items():
        ch.basic_publish("", queue, body, pika.BasicProperties(message_id=mid))
        env.tally.produced(mid, stream=queue)
    bare = f"no id at all {uuid.uuid4().hex}".encode()
    ch.basic_publish("", queue, bare)
    env.tally.produced(body_id(bare), stream=queue)

    # A mandatory publish nobody can route: the broker returns it, the
    # adapter reports an indeterminate produce, and the error reaches the caller.
    publisher = RabbitPublisher(ch, env.tally)
    with pytest.raises(UnroutableError):
        publisher.publish(f"nowhere-{uuid.uuid4().hex}", b"x", mandatory=True, stream=queue)
    assert (
        env.registry.get_sample_value(
            "msgtally_sdk_produced_total", {"stream": queue, "outcome": "error"}
        )
        == 1
    )

    got: list[str] = []
    ok: Counter[str] = Counter()

    def handle(msg: Received) -> None:
        got.append(msg.message_id)
        ok[msg.message_id] += 1

    consumer = connect()
    cch = consumer.channel()
    cch.basic_consume(queue, tallied(env.tally, "legacy", handle))
    pump(consumer, lambda: len(got) == 3)
    quiet(consumer)
    assert got == [*foreign, body_id(bare)]

    expected = figures(3, ok, [(m, 1) for m in got], set())
    assert expected["delivered"] == 3
    assert env.settle(queue, "legacy") == expected
    # No trace context travelled: the consumer spans have no links.
    processes = [s for s in env.spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(processes) == 3
    assert all(not s.links for s in processes)
