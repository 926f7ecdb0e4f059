"""The log on Kafka: a partitioned topic in place of the `log` table.

With `--log kafka://HOST:PORT/TOPIC`, collectors append each accepted
request to the topic instead of the `log` table, and workers (msgtally
worker, msgtally.reconcile.partitioned) run one state machine per partition.
This module is what both sides share: the URL, the message format, and the
partitions' registration in the store.

A message is msgpack [1, request_id, received_at, body]:
- `request_id`: the accepted request's id (hex), the same on every partition
  the request was split over; "" for a heartbeat;
- `received_at`: when the collector accepted the request (unix seconds): the
  partition's clock, as a log row's receipt time is the single engine's;
- `body`: a log body (msgtally.ingest.intake.logbody) with this partition's
  slice of the request's records (version 4: with the groups it announces,
  below), or nil: a heartbeat, which only moves the partition's clock
  (collectors send one to every partition each second, so deadlines expire
  on quiet partitions, and a replay judges exactly as the first run: every
  clock is in the topic).

A request that names a consumer group its collector has not seen announced
gives every partition a slice (records maybe none) of version 4, with the
group: each partition's machine expects it, and back-fills its own ids for it,
at that message, at the request's receipt time, as the single engine does at
the tick that first meets the group; on a partition the announcement comes
before the request's records (one message). A group announced twice (two
collectors, a resend) is expected once: the machine ignores a group it
expects. The collector then records the group in the store (logged_groups,
`record_logged`): collectors read it (`known_groups`) to announce each group
once, whichever collector meets it first.

A record goes to partition crc32(stream + NUL + message id) mod partitions
(zlib's CRC-32, the same in every process and release): every record of an
id, a resend too, lands on one partition, whose machine alone knows it.

A sender's numbering is checked on another partition: its sequence
(producer, stream, kind, group; group "" for a produce) is owned by
partition crc32(producer + NUL + stream + NUL + kind + NUL + group) mod
partitions, and a numbering sender's request carries there, in that
partition's slice, the seqs of the sequence's records (runs) and its marks
(msgtally.ingest.intake.logbody, version 3). So one machine sees the whole
of a sequence, as the single engine does, and finds its holes; the machines
of the ids do not check seqs at all (they would see a slice of a numbering
and take the rest for holes).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
from sqlalchemy import Connection, Engine, func, select

from msgtally.store.db import upsert, write_tx
from msgtally.store.tables import announced_groups, logged_groups, meta, partitions

SCHEME = "kafka"
VERSION = 1
PARTITIONS_KEY = "log_partitions"  # meta: the topic's partition count, fixed at first use


class KafkaLogError(Exception):
    """The Kafka log cannot be used: one line that says which and why."""


@dataclass(frozen=True)
class KafkaLog:
    """Where the log is: brokers (host:port, comma-separated) and the topic."""

    bootstrap: str
    topic: str

    def __str__(self) -> str:
        return f"{SCHEME}://{self.bootstrap}/{self.topic}"


def parse_log_url(url: str) -> KafkaLog:
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise KafkaLogError(f"--log {url!r}: must be kafka://HOST:PORT/TOPIC")
    topic = parts.path.strip("/")
    if not parts.netloc or not topic or "/" in topic:
        raise KafkaLogError(f"--log {url!r}: must be kafka://HOST:PORT/TOPIC (one topic)")
    return KafkaLog(parts.netloc, topic)


class Message(NamedTuple):
    request_id: str
    received_at: float
    body: bytes | None  # None: a heartbeat


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[int, str, float, bytes | None])


def encode_message(request_id: str, received_at: float, body: bytes | None) -> bytes:
    return _encoder.encode((VERSION, request_id, received_at, body))


def decode_message(raw: bytes) -> Message:
    try:
        version, request_id, received_at, body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise KafkaLogError(f"not a msgtally log message: {exc}") from None
    if version != VERSION:
        raise KafkaLogError(f"log message version {version}, this msgtally reads {VERSION}")
    return Message(request_id, received_at, body)


def heartbeat(received_at: float) -> bytes:
    return encode_message("", received_at, None)


def partition_of(stream: str, message_id: str, count: int) -> int:
    """The partition of every record of (stream, message id)."""
    return zlib.crc32(stream.encode() + b"\0" + message_id.encode()) % count


def sequence_partition(producer: str, stream: str, kind: str, group: str, count: int) -> int:
    """The partition that checks the numbering of (producer, stream, kind, group)."""
    key = b"\0".join(s.encode() for s in (producer, stream, kind, group))
    return zlib.crc32(key) % count


def known_groups(conn: Connection) -> set[tuple[str, str]]:
    """The (stream, group) pairs no request needs to announce in the log: those the
    partitions learn of from the store (announced_groups) and those announced in
    the log already (logged_groups)."""
    out: set[tuple[str, str]] = set()
    for table in (announced_groups, logged_groups):
        out.update((s, g) for s, g in conn.execute(select(table.c.stream, table.c.grp)))
    return out


def record_logged(conn: Connection, groups: Sequence[tuple[str, str]]) -> None:
    """Groups announced to every partition in the log, each acknowledged: a second
    collector's announcement of one is harmless, so a race only costs a message."""
    stmt = upsert(conn, logged_groups).on_conflict_do_nothing(index_elements=["stream", "grp"])
    conn.execute(stmt, [{"stream": s, "grp": g} for s, g in groups])


# -- the topic ---------------------------------------------------------------------


def _admin(log: KafkaLog) -> Any:
    from confluent_kafka.admin import AdminClient  # the `kafka` extra

    return AdminClient({"bootstrap.servers": log.bootstrap})


def topic_partitions(log: KafkaLog, timeout: float = 15.0) -> int:
    """The topic's partition count; a KafkaLogError when it does not exist or the
    brokers do not answer."""
    from confluent_kafka import KafkaException

    try:
        # Every topic: asking for one by name makes brokers that auto-create topics
        # make it, with their default partition count.
        topics = _admin(log).list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaLogError(f"{log}: the brokers do not answer ({exc})") from None
    found = topics.get(log.topic)
    if found is None or found.error is not None or not found.partitions:
        raise KafkaLogError(
            f"{log}: no such topic; create it first: msgtally topic create --log {log}"
        )
    return len(found.partitions)


def create_topic(log: KafkaLog, count: int, retention_ms: int, replication: int = 1) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    topic = NewTopic(
        log.topic, num_partitions=count, replication_factor=replication,
        config={"retention.ms": str(retention_ms), "cleanup.policy": "delete"},
    )  # fmt: skip
    admin = _admin(log)  # held until the futures resolve: its end fails them
    try:
        for future in admin.create_topics([topic]).values():
            future.result(30)
    except KafkaException as exc:
        raise KafkaLogError(f"{log}: cannot create the topic: {exc.args[0]}") from None


def register_partitions(store: Engine, log: KafkaLog, count: int) -> None:
    """Record the topic's partition count in the store, or check it against the
    count recorded: tallies, offsets and checkpoints are per partition, and ids
    hashed over another count would land on machines that never saw them."""
    with write_tx(store) as conn:
        recorded = conn.execute(select(meta.c.value).where(meta.c.key == PARTITIONS_KEY))
        value = recorded.scalar_one_or_none()
        if value is not None and int(value) != count:
            raise KafkaLogError(
                f"{log} has {count} partitions but this store was filled from {value}: "
                f"ids would be split otherwise. Give a topic of {value} partitions "
                "(or a new store)"
            )
        if value is None:
            conn.execute(meta.insert().values(key=PARTITIONS_KEY, value=str(count)))
        have = conn.execute(select(func.count()).select_from(partitions)).scalar_one()
        if have < count:
            stmt = upsert(conn, partitions).on_conflict_do_nothing(index_elements=["part"])
            conn.execute(
                stmt,
                [{"part": p, "epoch": 0, "next_offset": 0, "clock": 0.0, "owner": ""}
                 for p in range(count)],
            )  # fmt: skip


def open_log(store: Engine, url: str) -> tuple[KafkaLog, int]:
    """The log at `url`, its partition count checked against the store's."""
    log = parse_log_url(url)
    count = topic_partitions(log)
    register_partitions(store, log, count)
    return log, count
