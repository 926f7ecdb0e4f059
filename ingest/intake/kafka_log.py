"""The collector's write path on the Kafka log (`msgtally serve --log kafka://...`).

An accepted request is split by partition (msgtally.store.kafka_log.partition_of:
every record of an id on one partition), each slice encoded as a log body
and produced to its partition by an idempotent producer (acks=all); the
request is answered 2xx only once every slice is acknowledged. A failure or a
timeout raises LogUnavailable (503 with Retry-After): the shim sends the
request again, its slices land on the same partitions, and the workers'
machines count a record sent twice once, as the single engine does.

A sender that numbers its records per sequence (a request with `sequences`)
has each sequence checked on the one partition that owns it
(msgtally.store.kafka_log.sequence_partition): every slice of such a request
is a version 3 log body, with the runs and marks of the sequences its
partition owns (`split_sequences`) beside the records of the ids it owns.

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
from collections.abc import Callable, Sequence
from typing import Any

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.schema import Consume, Record, SequenceMark
from msgtally.store.kafka_log import (
    KafkaLog,
    encode_message,
    heartbeat,
    partition_of,
    sequence_partition,
)

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


def split_sequences(
    records: Sequence[Record], marks: Sequence[SequenceMark], count: int
) -> dict[int, tuple[list[logbody.Mark], list[logbody.Run]]]:
    """A numbering sender's request, its sequences' part per partition: the marks
    and the runs (each sequence's seqs, in the records' order) of the sequences
    the partition owns. The records counted are those the single engine checks:
    with a producer and a seq."""
    runs: dict[tuple[str, str, str, str], list[int]] = {}
    for r in records:
        if r.producer is None or r.seq is None:
            continue
        if type(r) is Consume:
            key = (r.producer, r.stream, "consume", r.group)
        else:
            key = (r.producer, r.stream, "produce", "")
        seqs = runs.get(key)
        if seqs is None:
            seqs = runs[key] = []
        seqs.append(r.seq)
    out: dict[int, tuple[list[logbody.Mark], list[logbody.Run]]] = {}
    for key, seqs in runs.items():
        out.setdefault(sequence_partition(*key, count), ([], []))[1].append((*key, seqs))
    for m in marks:
        part = sequence_partition(m.producer, m.stream, m.kind, m.group, count)
        out.setdefault(part, ([], []))[0].append(logbody.mark_of(m))
    return out


def slices(
    records: Sequence[Record], marks: Sequence[SequenceMark] | None, count: int
) -> dict[int, bytes]:
    """A request's log body per partition: the records of the ids each owns; from
    a numbering sender (`marks` not None, maybe empty), every slice in version 3,
    with the runs and marks of the sequences each owns."""
    parts = split(records, count)
    if marks is None:
        return {p: logbody.encode(rs, None) for p, rs in parts.items()}
    numbered = split_sequences(records, marks, count)
    return {
        p: logbody.encode_slice(parts.get(p, []), *numbered.get(p, ([], [])))
        for p in sorted(parts.keys() | numbered.keys())
    }


class _Pending:
    """The acknowledgements one request waits for."""

    def __init__(self, n: int, acked: Callable[[Any, Any], None]) -> None:
        self.left = n
        self.acked = acked  # the writer's: each acknowledged offset
        self.error: str | None = None
        self.fatal = False  # the producer is unusable: a new one for the next request
        self.done = threading.Event()
        self._lock = threading.Lock()

    def delivered(self, err: Any, msg: Any) -> None:
        self.acked(err, msg)
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
        # Per partition, one past the highest offset acknowledged to this producer:
        # the topic's end within a heartbeat (msgtally.store.engine_facts). Written
        # by delivery callbacks, which run in the poll thread only.
        self._ends = [0] * partitions
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
        self, records: Sequence[Record], marks: Sequence[SequenceMark] | None, received_at: float
    ) -> None:
        """Produce the request's slices; return once all are acknowledged.

        With `marks` (a numbering sender's request, maybe no marks), every slice
        is a version 3 body: the sequences' runs and marks go to the partitions
        that own the sequences, beside the ids' records.
        """
        bodies = slices(records, marks, self.partitions)
        if not bodies:
            return
        from confluent_kafka import KafkaException

        request_id = uuid.uuid4().hex
        pending = _Pending(len(bodies), self._acked)
        producer = self._producer
        try:
            for p, body in bodies.items():
                self._produce(encode_message(request_id, received_at, body), p, pending.delivered)
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
                self._produce(value, p, self._acked)
            except BufferError:
                return  # the queue is full of requests: their clocks move the partitions
            except KafkaException:
                return  # failed for good: the next request replaces the producer

    def ends(self) -> list[int]:
        """Per partition, one past the highest offset acknowledged so far."""
        return list(self._ends)

    def _acked(self, err: Any, msg: Any) -> None:
        if err is None:
            end = int(msg.offset()) + 1
            if end > self._ends[msg.partition()]:
                self._ends[msg.partition()] = end

    def _replace_producer(self, failed: Any, why: str | None) -> None:
        """A new producer in place of one failed for good (its queue is lost: what
        it held is answered 503, or was a heartbeat); once, whichever request saw it."""
        with self._replacing:
            if self._producer is not failed:
                return
            log_.warning("the Kafka producer failed for good (%s): a new one", why)
            self._producer = self._new_producer(self._settings)

    def _produce(self, value: bytes, partition: int, on_delivery: Any) -> None:
        self._producer.produce(
            self.log.topic, value=value, partition=partition, on_delivery=on_delivery
        )

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            self.beat(time.time())
