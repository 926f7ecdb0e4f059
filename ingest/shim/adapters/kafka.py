"""Kafka adapter on confluent-kafka (librdkafka): confirmed produces, tallied consumers.

In the adapters' common dialect (`msgtally.ingest.shim.adapters.common`):

- `Publisher(config, tally, *, stream=None)`: a `confluent_kafka.Producer`
  (`.producer`) made from `config` over `PRODUCER_DEFAULTS` (idempotent,
  `acks=all`); `.publish(topic, value, *, key=None, message_id=None,
  headers=None, partition=None, stream=None, attempt=1, on_delivery=None)`
  produces with the `msgtally-message-id`, `traceparent` (and `tracestate`)
  headers; `.poll(timeout)`, `.flush(timeout)`, `.close()`.
- `Consumer(config, tally, group, topics, handler, *, stream=None,
  acks="after", max_attempts=5, dead_letter_topic=None,
  dead_letter_producer=None)`: a `confluent_kafka.Consumer` (`.consumer`)
  of consumer group `group`, subscribed to `topics`, for `def
  handler(received)` (the `common.Consumer` contract; Kafka has no push, so
  the consumer reads for itself): `read(max_records=100, timeout=1.0) ->
  list[Received]`, `close()`.
- `Received`: the common one with confluent-kafka's `message` and its
  `topic`, `partition` and `offset`.
- `message_id_of(message)`, `headers_of(message)`, `record_id(message)`.

    tally = Tally(collector_url="http://collector:8410", system="kafka")
    publisher = Publisher({"bootstrap.servers": "kafka:9092"}, tally)
    publisher.publish("orders", b"{...}", key=b"customer-7")
    publisher.flush()                                   # delivery reports

    def handle(msg: Received) -> None:
        bill(msg.body)                                  # raises -> read again

    consumer = Consumer({"bootstrap.servers": "kafka:9092"}, tally, "billing",
                        ["orders"], handle)
    while running:
        consumer.read()
    consumer.close()

Produce outcome: the delivery report. `ok` when the broker acknowledged the
record (with `acks=all`: every in-sync replica has it); `error`
(indeterminate) when the report carries an error (message timeout, a
broker refusal) or `produce` raised (a full local queue: `BufferError`, an
oversized record); the exception propagates. `publish` returns at once:
reports arrive from `poll`, which `publish` calls with no wait, and from
`flush`. The PRODUCER span lasts from `publish` to the report.

Message id: the `message_id` given, in the `msgtally-message-id` header;
without one, `<topic>:<partition>:<offset>`, known from the delivery report
(the record then carries the trace context only; a failed delivery has no
offset, so nothing to report it under: it is counted as a dropped record).
The consumer reads the header, else the same `<topic>:<partition>:<offset>`,
which also gives producers without msgtally an id that joins.

Stream: `stream=`, else the publisher's / consumer's, else `tally.stream`,
else the topic.

Attempt: Kafka keeps no delivery count. The consumer numbers the
re-deliveries it sees itself: a record read again in this process, after
a handler failure (the adapter seeks back to it) or a `seek` of the
caller's, is attempt n+1. A record read again after a rebalance moved its
partition, or after a consumer crashed before committing, is attempt 1 of
another delivery: a duplicate, which is what it is.

Commit policy (`acks="after"`, at least once, the default): the handler
returns -> the consume record is emitted, then the record's offset + 1 is
stored (`store_offsets`; `enable.auto.offset.store` is off). Stored offsets
are committed by librdkafka every `auto.commit.interval.ms` (5 s), and by
the adapter, synchronously, whenever partitions are revoked (a rebalance)
and on `close()`. So a crash re-delivers at most the records processed
since the last commit (reported again: duplicates), and a rebalance
re-delivers none of the processed ones. The handler raises (logged, not
re-raised) or calls `failed()` -> `error`, and the consumer seeks back to
the record: it is read again (attempt n+1) before anything after it in its
partition. A failure on attempt `max_attempts` (5) or later, or
`dead_letter()` -> the record (value, key, headers, plus
`msgtally-dead-letter-of`, `-partition`, `-offset`, `-group` and
`msgtally-delivery-count`) is produced to `dead_letter_topic`
(`<topic>.dlq` by default) and its delivery awaited, then it is reported
`dead_letter` and its offset stored. `acks="before"` (at most once): the
offset is committed, synchronously, before the handler runs; a failure is
reported `error` and the record is never read again (lost).
`acks="manual"`: the adapter only reports; the caller stores or commits.
`close()` commits what was processed, leaves the group and flushes the
Tally's records.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from msgtally.ingest.shim.adapters import common
from msgtally.ingest.shim.adapters.common import Acks, Handler, RetryPolicy, Step, Tallied
from msgtally.ingest.shim.classify import kafka_error_class
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally

__all__ = [
    "CONSUMER_DEFAULTS",
    "PRODUCER_DEFAULTS",
    "Consumer",
    "Publisher",
    "Received",
    "headers_of",
    "message_id_of",
    "record_id",
]

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: Mapping[str, Any] = {"enable.idempotence": True, "acks": "all"}
# The commit policy of the module docstring: offsets are stored by the adapter
# only, whatever `config` says.
_CONSUMER_POLICY: Mapping[str, Any] = {"enable.auto.offset.store": False}
CONSUMER_DEFAULTS: Mapping[str, Any] = {"enable.auto.commit": True, **_CONSUMER_POLICY}
DEAD_LETTER_OF = "msgtally-dead-letter-of"
DEAD_LETTER_PARTITION = "msgtally-dead-letter-partition"
DEAD_LETTER_OFFSET = "msgtally-dead-letter-offset"
DEAD_LETTER_GROUP = "msgtally-dead-letter-group"
DELIVERY_COUNT = "msgtally-delivery-count"
# Connection settings a dead-letter producer takes from the consumer's config.
_CONNECTION_KEYS = ("bootstrap.servers", "security.protocol", "client.dns.lookup")
_CONNECTION_PREFIXES = ("sasl.", "ssl.")
_ATTEMPTS_KEPT = 100_000  # re-reads further back than this many records count as new
Headers = Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]]
OnDelivery = Callable[[KafkaError | None, Message], object]


def record_id(message: Message) -> str:
    """`<topic>:<partition>:<offset>`: the record's place, the fallback message id."""
    return f"{message.topic()}:{message.partition()}:{message.offset()}"


def headers_of(message: Message) -> dict[str, str]:
    """The record's headers decoded as UTF-8 (others left out; the first of a name wins)."""
    raw = message.headers() or ()
    return common.text_headers(raw.items() if isinstance(raw, Mapping) else raw)


def message_id_of(message: Message) -> str:
    """The `msgtally-message-id` header, else `<topic>:<partition>:<offset>`."""
    return headers_of(message).get(MESSAGE_ID_HEADER) or record_id(message)


class Publisher:
    """Produces with the message id and trace context, reports each delivery report."""

    def __init__(
        self, config: Mapping[str, Any], tally: Tally, *, stream: str | None = None
    ) -> None:
        self.producer = confluent_kafka.Producer({**PRODUCER_DEFAULTS, **config})
        self.tally = tally
        self.stream = stream

    def publish(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        message_id: str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        stream: str | None = None,
        attempt: int = 1,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        """Produce one record; its delivery report (served by `poll` / `flush`)
        reports it and then calls `on_delivery(err, message)`."""
        s = common.stream_for(self.tally, topic, stream, self.stream)
        # The produce is reported when the delivery report comes: the
        # `sending` block is entered here and left in the delivery callback.
        block = self.tally.sending(message_id, stream=s, attempt=attempt)
        sending = block.__enter__()
        given = headers.items() if isinstance(headers, Mapping) else headers or ()

        def delivered(err: KafkaError | None, message: Message) -> None:
            if err is not None:
                sending.failed(kafka_error_class(err))
            elif message_id is None:
                sending.message_id = record_id(message)
            block.__exit__(None, None, None)
            if on_delivery is not None:
                on_delivery(err, message)

        try:
            self.producer.produce(
                topic,
                value,
                key,
                partition=-1 if partition is None else partition,
                headers=[*given, *sending.headers.items()],
                on_delivery=delivered,
            )
        except BaseException as exc:
            block.__exit__(type(exc), exc, exc.__traceback__)  # reported error
            raise
        self.producer.poll(0)

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports; returns how many."""
        return self.producer.poll(timeout)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for every delivery report; returns how many records are still queued."""
        return self.producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> int:
        return self.flush(timeout)


@dataclass(kw_only=True, eq=False)
class Received(common.Received[bytes]):
    """One delivery, as the handler sees it: the common fields, confluent-kafka's
    `message` and the record's place."""

    message: Message
    topic: str
    partition: int
    offset: int


class Consumer(Tallied[Received]):
    """One member of a consumer group; see the module docstring for the policy."""

    def __init__(
        self,
        config: Mapping[str, Any],
        tally: Tally,
        group: str,
        topics: Iterable[str],
        handler: Handler[Received],
        *,
        stream: str | None = None,
        acks: Acks = "after",
        max_attempts: int | None = 5,
        dead_letter_topic: str | None = None,
        dead_letter_producer: confluent_kafka.Producer | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        # `retry` is announced, its dead-letter target `dead_letter_topic` unless given
        # (by default `<topic>.dlq`: named when there is one topic).
        subscribed = list(topics)
        if retry is None or retry.dead_letter is None:
            target = dead_letter_topic or (
                f"{subscribed[0]}.dlq" if len(subscribed) == 1 else "<topic>.dlq"
            )  # fmt: skip
            retry = replace(retry or RetryPolicy(), dead_letter=target)
        super().__init__(tally, group, handler, stream, acks, max_attempts, retry)
        settings = {**CONSUMER_DEFAULTS, **config, **_CONSUMER_POLICY, "group.id": group}
        self.consumer = confluent_kafka.Consumer(settings)
        self.dead_letter_topic = dead_letter_topic
        self._own_producer = dead_letter_producer is None
        self._dead_letters = dead_letter_producer
        self._connection = {
            k: v
            for k, v in config.items()
            if k in _CONNECTION_KEYS or k.startswith(_CONNECTION_PREFIXES)
        }
        # Deliveries seen per record, to number the re-reads of this process.
        self._attempts: OrderedDict[tuple[str, int, int], int] = OrderedDict()
        self.consumer.subscribe(subscribed, on_revoke=self._revoked, on_lost=self._lost)

    def read(self, max_records: int = 100, timeout: float = 1.0) -> list[Received]:
        """Read up to `max_records` records (waiting up to `timeout` s for the
        first) and report, run and settle each."""
        out: list[Received] = []
        rewound: set[tuple[str, int]] = set()
        for message in self.consumer.consume(max_records, timeout):
            err = message.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("kafka consumer %s: %s", self.group, err)
                continue
            place = (message.topic() or "", message.partition() or 0)
            if place in rewound:
                continue  # fetched before the seek back: it comes again
            received = self(message)
            out.append(received)
            if received.outcome == "error" and self.acks == "after":
                rewound.add(place)
        return out

    def __call__(self, message: Message) -> Received:
        """Report, run and settle one record."""
        topic, partition, offset = message.topic() or "", message.partition(), message.offset()
        assert partition is not None and offset is not None
        key = (topic, partition, offset)
        attempt = self._attempts.pop(key, 0) + 1
        self._attempts[key] = attempt
        if len(self._attempts) > _ATTEMPTS_KEPT:
            self._attempts.popitem(last=False)
        value = message.value()
        headers = headers_of(message)
        return self.consume(
            Received(
                message=message,
                topic=topic,
                partition=partition,
                offset=offset,
                body=value.encode() if isinstance(value, str) else value or b"",
                message_id=headers.get(MESSAGE_ID_HEADER) or f"{topic}:{partition}:{offset}",
                attempt=attempt,
                stream=common.stream_for(self.tally, topic, self.stream),
                headers=headers,
            )
        )

    def settle(self, received: Received, step: Step) -> None:
        next_offset = [TopicPartition(received.topic, received.partition, received.offset + 1)]
        if step == "ack" and self.acks == "before":
            self.consumer.commit(offsets=next_offset, asynchronous=False)
        elif step == "ack":
            self.consumer.store_offsets(offsets=next_offset)
        elif step == "retry":
            self.consumer.seek(TopicPartition(received.topic, received.partition, received.offset))
        else:
            self._dead_letter(received)
            self.consumer.store_offsets(offsets=next_offset)

    def _dead_letter(self, received: Received) -> None:
        """Produce the record to the dead-letter topic and wait for its delivery."""
        if self._dead_letters is None:
            self._dead_letters = confluent_kafka.Producer({**PRODUCER_DEFAULTS, **self._connection})
        message = received.message
        raw = message.headers() or ()
        headers = [
            *(raw.items() if isinstance(raw, Mapping) else raw),
            (MESSAGE_ID_HEADER, received.message_id.encode()),
            (DEAD_LETTER_OF, received.topic.encode()),
            (DEAD_LETTER_PARTITION, str(received.partition).encode()),
            (DEAD_LETTER_OFFSET, str(received.offset).encode()),
            (DEAD_LETTER_GROUP, self.group.encode()),
            (DELIVERY_COUNT, str(received.attempt).encode()),
        ]
        failed: list[KafkaError] = []

        def delivered(err: KafkaError | None, _message: Message) -> None:
            if err is not None:
                failed.append(err)

        self._dead_letters.produce(
            self.dead_letter_topic or f"{received.topic}.dlq",
            message.value(),
            message.key(),
            headers=headers,
            on_delivery=delivered,
        )
        if self._dead_letters.flush(30) or failed:
            # Not stored: the record is read again after a restart or rebalance.
            raise KafkaException(failed[0] if failed else KafkaError(KafkaError._MSG_TIMED_OUT))

    def _revoked(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        """A rebalance takes partitions away: commit what was processed of them."""
        self._commit_stored()
        self._lost(consumer, partitions)

    def _commit_stored(self) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing stored since
                log.warning("kafka consumer %s: commit failed: %s", self.group, exc)

    def _lost(self, _consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        """Whoever reads these partitions next, a re-read is a new delivery."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in [k for k in self._attempts if k[:2] in gone]:
            del self._attempts[key]

    def close(self, timeout: float = 10.0) -> None:
        """Commit what was processed, leave the group, flush the Tally's records."""
        self._commit_stored()
        self.consumer.close()
        if self._dead_letters is not None and self._own_producer:
            self._dead_letters.flush(timeout)
        self.tally.flush(timeout)


if TYPE_CHECKING:

    def _keeps_the_contract(consumer: Consumer) -> common.Consumer[[Message], Received]:
        return consumer  # mypy checks that the consumer keeps the common contract
