"""RabbitMQ adapter end to end: the real broker on 127.0.0.1:5672, a real collector.

Every fault happens in the broker for real: nack+requeue (retries, counted by
the quorum queue's x-delivery-count), a consumer channel closed with
processed-but-unacked messages (redelivered: duplicates), an auto-ack
consumer that dies with messages the broker already forgot (loss), and
rejects routed by the broker through a real dead-letter exchange. The SLIs
the collector reports must equal what the test observed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from opentelemetry.trace import SpanKind
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker, UnroutableError

from msgtally.ingest.shim.adapters.common import body_digest
from msgtally.ingest.shim.adapters.rabbitmq import Publisher, Received, tallied
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER
from tests.adapter_support import GROUP, Env, Observed, adapter_env, figures_of
from tests.conftest import service_unavailable

PARAMS = pika.ConnectionParameters(
    host="127.0.0.1",
    port=5672,
    credentials=pika.PlainCredentials("guest", "guest"),
    connection_attempts=1,
    socket_timeout=5,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with adapter_env(tmp_path, "rabbitmq") as made:
        yield made


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


def queue_depth(ch: Any, queue: str) -> int:
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def publish(publisher: Publisher, obs: Observed, queue: str, label: str, n: int) -> list[str]:
    ids = [publisher.publish(queue, f"{label} {i}".encode()) for i in range(n)]
    for mid in ids:
        obs.produce(mid)
    return ids


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
    tally, obs = env.tally(), Observed()
    ids = publish(Publisher(ch, tally), obs, queue, "order", 12)
    flaky = {ids[1], ids[5], ids[9]}  # raise on the first attempt only
    rejected = {ids[2], ids[7]}  # the handler dead-letters them
    poison = ids[10]  # raises every time: dead-lettered on attempt 3

    delivery_counts: dict[str, list[int]] = {}
    final: set[str] = set()

    def handle(msg: Received) -> None:
        delivery_counts.setdefault(msg.message_id, []).append(
            msg.properties.headers.get("x-delivery-count")
        )
        if msg.message_id == poison:
            obs.deliver(msg.message_id, msg.attempt, "dead_letter" if msg.attempt >= 3 else "error")
            if msg.attempt >= 3:
                final.add(msg.message_id)
            raise ValueError("poison")
        if msg.message_id in flaky and msg.attempt == 1:
            obs.deliver(msg.message_id, msg.attempt, "error")
            raise ValueError("flaky")
        final.add(msg.message_id)
        if msg.message_id in rejected:
            obs.deliver(msg.message_id, msg.attempt, "dead_letter")
            msg.dead_letter()
            return
        obs.deliver(msg.message_id, msg.attempt)

    consumer = connect()
    cch = consumer.channel()
    cch.basic_qos(prefetch_count=20)
    cch.basic_consume(queue, tallied(tally, "billing", handle, max_attempts=3))
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
    seen = [(m, a) for m, a, _ in obs.deliveries]
    for mid in flaky:
        assert [a for m, a in seen if m == mid] == [1, 2]
        assert delivery_counts[mid] == [None, 1]  # no header on a first push delivery
    assert [a for m, a in seen if m == poison] == [1, 2, 3]
    assert delivery_counts[poison] == [None, 1, 2]

    expected = obs.expected()
    assert expected == figures_of(
        produced=12,
        delivered=9,
        lost=3,
        retried=4,
        attempts=17,
        dead_lettered=3,
        consume_errors=5,
    )
    assert env.figures(queue) == expected
    assert env.discrepancies(queue, "lost") == sorted({*rejected, poison})

    # Trace context: every consumer span links to its message's producer span.
    assert {s.attributes["messaging.message.id"] for s in env.spans_of(SpanKind.PRODUCER)} == set(
        ids
    )
    assert env.check_links() == (len(seen), 0)


def test_processed_then_channel_closed_before_ack_is_redelivered_as_duplicates(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    queue = names("")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue)  # classic queue: the redelivered flag is all there is
    tally, obs = env.tally(), Observed()
    ids = publish(Publisher(ch, tally), obs, queue, "invoice", 8)
    tags: list[int] = []

    def handle(msg: Received) -> None:
        obs.deliver(msg.message_id, msg.attempt)
        tags.append(msg.method.delivery_tag)

    # Consumer A processes all 8 and acks in batches: it acks the first 3
    # (multiple=True), then its channel closes before the next batch ack.
    first = connect()
    ach = first.channel()
    ach.basic_qos(prefetch_count=8)
    ach.basic_consume(queue, tallied(tally, "billing", handle, acks="manual"))
    pump(first, lambda: len(obs.deliveries) == 8)
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
    bch.basic_consume(queue, tallied(tally, "billing", handle_b))
    pump(second, lambda: len(obs.deliveries) == 13)
    quiet(second)
    assert redelivered == [True] * 5
    assert [(m, a) for m, a, _ in obs.deliveries[8:]] == [(m, 2) for m in ids[3:]]
    assert queue_depth(bch, queue) == 0

    expected = obs.expected()
    assert expected == figures_of(produced=8, delivered=8, duplicated=5, retried=5, attempts=13)
    assert env.figures(queue) == expected
    assert env.discrepancies(queue, "duplicated") == sorted(ids[3:])


class Crash(Exception):
    """The consumer process dies."""


def test_auto_ack_consumer_that_dies_loses_what_it_had_not_processed(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    queue = names("")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue)
    tally, obs = env.tally(), Observed()
    ids = publish(Publisher(ch, tally), obs, queue, "event", 10)

    def handle(msg: Received) -> None:
        obs.deliver(msg.message_id, msg.attempt)

    # auto_ack: the broker forgets a message as soon as it sends it. The
    # consumer processes 4, then dies on the 5th with the rest in its buffer.
    wrapped = tallied(tally, "billing", handle, acks="manual")

    def dying(ch: Any, method: Any, props: Any, body: bytes) -> None:
        if len(obs.deliveries) == 4:
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
    rch.basic_consume(queue, tallied(tally, "billing", handle))
    pump(rescuer, lambda: len(obs.deliveries) == 4 + left)
    quiet(rescuer)
    assert len(obs.deliveries) == 4 + left

    lost = set(ids) - set(obs.ok())
    assert len(lost) >= 1  # at least the message it died on, already auto-acked
    expected = obs.expected()
    assert expected == figures_of(
        produced=10, delivered=4 + left, lost=len(lost), attempts=4 + left
    )
    assert expected["lost"] == 10 - 4 - left
    assert env.figures(queue) == expected
    assert env.discrepancies(queue, "lost") == sorted(lost)


def test_fallback_ids_and_unconfirmed_publish(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    queue = names("")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue)
    tally, obs = env.tally(), Observed()
    publisher = Publisher(ch, tally)  # turns on confirms for the channel

    # A producer without msgtally: AMQP message_id only, or nothing at all;
    # it reports what it published itself, with the ids the consumer falls back to.
    foreign = {f"legacy-{uuid.uuid4().hex[:8]}-{n}": body for n, body in enumerate((b"a", b"b"))}
    for mid, body in foreign.items():
        ch.basic_publish("", queue, body, pika.BasicProperties(message_id=mid))
        tally.produced(mid, stream=queue)
        obs.produce(mid)
    bare = f"no id at all {uuid.uuid4().hex}".encode()
    ch.basic_publish("", queue, bare)
    tally.produced(body_digest(bare), stream=queue)
    obs.produce(body_digest(bare))

    # A mandatory publish nobody can route: the broker returns it, the
    # adapter reports an indeterminate produce, and the error reaches the caller.
    with pytest.raises(UnroutableError):
        publisher.publish(f"nowhere-{uuid.uuid4().hex}", b"x", mandatory=True, stream=queue)
    assert (
        env.registry(tally).get_sample_value(
            "msgtally_sdk_produced_total", {"stream": queue, "outcome": "error"}
        )
        == 1
    )

    def handle(msg: Received) -> None:
        obs.deliver(msg.message_id, msg.attempt)

    consumer = connect()
    cch = consumer.channel()
    cch.basic_consume(queue, tallied(tally, "billing", handle))
    pump(consumer, lambda: len(obs.deliveries) == 3)
    quiet(consumer)
    assert [m for m, _, _ in obs.deliveries] == [*foreign, body_digest(bare)]

    expected = obs.expected()
    assert expected == figures_of(produced=3, delivered=3, attempts=3)
    assert env.figures(queue) == expected
    # No trace context travelled: the consumer spans have no links.
    assert env.check_links() == (0, 3)


def test_error_classes_on_the_real_broker(
    env: Env, connect: Callable[[], pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    """Three failures RabbitMQ really produces, each in its class, counted exactly in
    /v1/slis: a handler forwarding with a password the broker refuses (auth), a body
    that does not decode (serialization), a publish to an exchange that does not
    exist (the broker closes the channel, 404: unavailable)."""
    queue = names("")
    conn = connect()
    conn.channel().queue_declare(queue)
    tally = env.tally()
    publisher = Publisher(conn.channel(), tally)
    obs = Observed()
    good = [publisher.publish(queue, json.dumps({"n": i}).encode()) for i in range(3)]
    bad = [publisher.publish(queue, b"{not json " + bytes([48 + i])) for i in range(2)]
    forward = [publisher.publish(queue, json.dumps({"forward": i}).encode()) for i in range(2)]
    for mid in good + bad + forward:
        obs.produce(mid)
    gone = Publisher(conn.channel(), tally)
    with pytest.raises(ChannelClosedByBroker) as closed:
        gone.publish(queue, b"{}", exchange=names(".missing"), message_id="to-nowhere")
    assert closed.value.reply_code == 404
    obs.produce("to-nowhere", acked=False)

    rotated = pika.ConnectionParameters(
        host="127.0.0.1", port=5672, credentials=pika.PlainCredentials("guest", "rotated"),
        connection_attempts=1, socket_timeout=5,
    )  # fmt: skip
    seen: list[str] = []

    def handle(msg: Received) -> None:
        seen.append(msg.message_id)
        body = json.loads(msg.body)  # JSONDecodeError: serialization
        if "forward" in body:  # downstream, with a password the broker no longer takes
            pika.BlockingConnection(rotated).close()  # ProbableAuthenticationError: auth

    ch = conn.channel()
    ch.basic_consume(queue, tallied(tally, GROUP, handle, max_attempts=1))
    pump(conn, lambda: len(seen) == 7)
    quiet(conn)
    for mid in seen:
        obs.deliver(mid, 1, "ok" if mid in good else "dead_letter")

    assert sorted(seen) == sorted(good + bad + forward)
    assert env.errors(queue) == {
        "produce": {"unavailable": 1},
        "consume": {"serialization": 2, "auth": 2},
    }
    assert env.figures(queue) == obs.expected() == figures_of(
        produced=7, delivered=3, lost=4, attempts=7, dead_lettered=4
    )
