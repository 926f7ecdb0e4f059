"""The collector's write path on the Kafka log (`msgtally serve --log kafka://...`).

An accepted request is split by partition (msgtally.store.kafka_log.partition_of:
every record of an id on one partition), each slice encoded as a log body
and produced to its partition by an idempotent producer (acks=all); the
request is answered 2xx only once every slice is acknowledged. A failure or a
timeout raises LogUnavailable (503 with Retry-After): the shim sends the
request again, its slices land on the same partitions, and the workers'
machines count a record sent twice once, as the single engine does.

A heartbeat goes to every partition each `heartbeat_every` seconds: it moves
the partition's clock, so deadlines expire on quiet partitions too.

A producer can fail for good (librdkafka's fatal errors; or, after the broker
was unreachable past a request's timeout, the idempotent producer bumps its
epoch and the broker fences it, as Tansu does): the request in hand is
answered 503, and the next one goes through a new producer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.schema import Record
from msgtally.store.kafka_log import KafkaLog, encode_message, heartbeat, partition_of

log_ = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0  # seconds for every slice of a request to be acknowledged
DEFAULT_HEARTBEAT = 1.0  # seconds between heartbeats to every partition


# Delivery errors after which the producer is no use: librdkafka's fatal errors
# (RD_KAFKA_RESP_ERR__FATAL), and PRODUCER_FENCED, which a broker can answer for
# good to an idempotent producer that bumped its epoch after timeouts (Tansu does).
_FOR_GOOD = frozenset({-150, 90})


class LogUnavailable(Exception):
    """The Kafka log did not acknowledge every slice of a request: nothing is
    promised, the sender must send the request again."""


def split(records: Sequence[Record], count: int) -> dict[int, list[Record]]:
    """The records of a request per partition, in their order."""
    out: dict[int, list[Record]] = {}
    for r in records:
        out.setdefault(partition_of(r.stream, r.message_id, count), []).append(r)
    return out


class _Pending:
    """The acknowledgements one request waits for."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.error: str | None = None
        self.fatal = False  # the producer is unusable: a new one for the next request
        self.done = threading.Event()
        self._lock = threading.Lock()

    def delivered(self, err: Any, _msg: Any) -> None:
        with self._lock:
            if err is not None and self.error is None:
                self.error = str(err)
                self.fatal = bool(err.fatal()) or err.code() in _FOR_GOOD
            self.left -= 1
            if self.left <= 0 or err is not None:
                self.done.set()


class KafkaWriter:
    """One idempotent producer per collector process, with its poll and heartbeat
    threads; `start` and `close` around its use."""

    def __init__(
        self, log: KafkaLog, partitions: int, *, timeout: float = DEFAULT_TIMEOUT,
        heartbeat_every: float = DEFAULT_HEARTBEAT,
    ) -> None:  # fmt: skip
        from confluent_kafka import Producer  # the `kafka` extra

        self.log, self.partitions, self.timeout = log, partitions, timeout
        self.heartbeat_every = heartbeat_every
        self._settings = {
            "bootstrap.servers": log.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            # A slice not acknowledged by then fails its request (503).
            "message.timeout.ms": int(timeout * 1000),
            "compression.type": "lz4",
        }
        self._new_producer = Producer
        self._replacing = threading.Lock()
        self._producer = Producer(self._settings)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll, name="msgtally-kafka-poll", daemon=True),
            threading.Thread(target=self._beat, name="msgtally-kafka-heartbeat", daemon=True),
        ]

    def start(self) -> KafkaWriter:
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join()
        self._producer.flush(self.timeout)

    def append(
        self, records: Sequence[Record], marks: Any, received_at: float
    ) -> None:
        """Produce the request's slices; return once all are acknowledged.

        `marks` (the sender's sequence marks) are not carried: a partition sees
        a slice of a sender's numbering, and would take the rest for holes.
        """
        del marks
        parts = split(records, self.partitions)
        if not parts:
            return
        from confluent_kafka import KafkaException

        request_id = uuid.uuid4().hex
        pending = _Pending(len(parts))
        producer = self._producer
        try:
            for p, slice_ in parts.items():
                value = encode_message(request_id, received_at, logbody.encode(slice_, None))
                self._produce(value, p, pending.delivered)
        except BufferError as exc:
            raise LogUnavailable(f"the producer's queue is full ({exc})") from None
        except KafkaException as exc:  # a producer failed for good refuses at once
            self._replace_producer(producer, str(exc))
            raise LogUnavailable(f"the Kafka log refused the request: {exc}") from None
        if not pending.done.wait(self.timeout + 5):
            raise LogUnavailable("the Kafka log did not acknowledge the request in time")
        if pending.fatal:
            self._replace_producer(producer, pending.error)
        if pending.error is not None:
            raise LogUnavailable(f"the Kafka log refused the request: {pending.error}")

    def beat(self, at: float) -> None:
        """A heartbeat on every partition, at `at` (the receipt clock)."""
        from confluent_kafka import KafkaException

        value = heartbeat(at)
        for p in range(self.partitions):
            try:
                self._produce(value, p, None)
            except BufferError:
                return  # the queue is full of requests: their clocks move the partitions
            except KafkaException:
                return  # failed for good: the next request replaces the producer

    def _replace_producer(self, failed: Any, why: str | None) -> None:
        """A new producer in place of one failed for good (its queue is lost: what
        it held is answered 503, or was a heartbeat); once, whichever request saw it."""
        with self._replacing:
            if self._producer is not failed:
                return
            log_.warning("the Kafka producer failed for good (%s): a new one", why)
            self._producer = self._new_producer(self._settings)

    def _produce(self, value: bytes, partition: int, on_delivery: Any) -> None:
        kwargs = {"on_delivery": on_delivery} if on_delivery is not None else {}
        self._producer.produce(self.log.topic, value=value, partition=partition, **kwargs)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            self.beat(time.time())
