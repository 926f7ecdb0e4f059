"""The engine over the Kafka log under test: a history with every outcome, the
collectors' and workers' sides in the test process, and the comparison of
every figure with the single engine's on the same requests."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, func, select

from msgtally.ingest.intake.kafka_log import groups_of, slices
from msgtally.ingest.intake.schema import Batch, parse_batch
from msgtally.ingest.intake.writer import write_batch
from msgtally.ingest.shim.wire import record_to_json
from msgtally.oracle import ID_KINDS, Record, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.reconcile.partitioned.worker import Worker
from msgtally.store.db import open_store
from msgtally.store.kafka_log import KafkaLog, create_topic
from msgtally.store.tables import latency_buckets, partitions
from tests.harness import (
    assert_discrepancies,
    assert_figures,
    discrepancy_ids,
    figures,
    missing,
)
from tests.kafka_broker import Tansu

CONFIG = ReconcileConfig(
    stream_deadlines={"s2": 60.0}, expected_groups={"s1": ("cfg",)}, settle=10.0
)


def history(seed: int, n: int, start: float) -> list[list[Record]]:
    """Requests of the records of 10 ids each: ids of two streams produced and
    consumed by three groups with every outcome (delivered, lost, late,
    duplicated, retried, dead-lettered, unexpected, recovered), some requests
    sent twice (a shim's resend), and a fourth group, g4, that appears only in
    the last request: it is owed every id produced before.

    An id's records come in one request (shuffled within it), as the engine's
    verdicts are final once given (docs/definitions.md): records of an id that
    came after its verdict would make the figures depend on when each engine
    judged, and the oracle is the one-shot view."""
    rng = random.Random(seed)
    ids: list[list[Record]] = []
    for i in range(n):
        stream = rng.choice(("s1", "s2"))
        mid, t0 = f"m{i}", start + rng.uniform(0, 50)
        deadline = CONFIG.deadline_of(stream)
        kind = rng.choice(("ok", "ok", "lost", "late", "dup", "retry", "dl", "unexp", "recov"))
        records = []
        if kind != "unexp":
            outcome = "error" if kind == "recov" else "ok"
            records.append(Record(stream, "produce", mid, t0, outcome=outcome,
                                  record_id=f"{mid}/p"))  # fmt: skip
        for g in rng.sample(("g1", "g2", "g3"), rng.randint(1, 3)):
            if kind == "lost" and g == "g1":
                continue
            at = t0 + rng.uniform(0.01, 5)
            if kind == "late":
                at = t0 + deadline + rng.uniform(1, 20)
            attempts = [(1, "error"), (2, "ok")] if kind == "retry" else [(1, "ok")]
            if kind == "dl":
                attempts = [(1, "error"), (2, "dead_letter")]
            if kind == "dup":
                attempts = [(1, "ok"), (1, "ok")]
            for k, (attempt, outcome) in enumerate(attempts):
                records.append(Record(stream, "consume", mid, at + k, g, attempt, outcome,
                                      record_id=f"{mid}/{g}/{k}"))  # fmt: skip
        rng.shuffle(records)
        ids.append(records)
    requests = [[r for rs in ids[i : i + 10] for r in rs] for i in range(0, n, 10)]
    for _ in range(len(requests) // 8):  # resent, later
        again = requests[rng.randrange(len(requests))]
        requests.insert(rng.randrange(requests.index(again) + 1, len(requests) + 1), again)
    late_group = [
        Record(rs[0].stream, "consume", rs[0].message_id, rs[0].ts + 1, "g4",
               record_id=f"{rs[0].message_id}/g4")
        for rs in ids[::7] if rs[0].kind == "produce" and rs[0].outcome == "ok"
    ]  # fmt: skip
    return [*requests, late_group]


def batch_of(records: Sequence[Record]) -> Batch:
    return Batch(parse_batch([record_to_json(r) for r in records]), [], None)


def single_engine(store: Engine, requests: Sequence[Sequence[Record]], now: float) -> None:
    """The same requests through the single engine: the reference."""
    for i, request in enumerate(requests):
        write_batch(store, batch_of(request), received_at=1000.0 + i)
    reconcile(store, CONFIG, now)


def assert_exact(store: Engine, requests: Sequence[Sequence[Record]], final: float,
                 single_url: str) -> None:  # fmt: skip
    """Every figure of the store is the oracle's and the single engine's (run on
    the same requests in a store at `single_url`)."""
    single = open_store(single_url)
    try:
        single_engine(single, requests, final)
        sent = [r for request in requests for r in request]
        want = oracle(sent, deadline=CONFIG.deadline, stream_deadlines=CONFIG.stream_deadlines,
                      expected_groups=CONFIG.expected_groups)  # fmt: skip
        assert_figures(figures(store), want)
        assert_discrepancies(store, want)
        assert_same(store, single)
    finally:
        single.dispose()


def slices_sent(
    known: set[tuple[str, str]], records: Sequence[Any], marks: Sequence[Any] | None, count: int
) -> dict[int, bytes]:
    """The slices a KafkaWriter sends for a request, per partition: with the groups
    new to `known` (what it announced so far, updated) announced to every one."""
    new = sorted(groups_of(records) - known)
    known.update(new)
    return slices(records, marks, count, new)


def new_topic(broker: Tansu, partitions: int) -> KafkaLog:
    log = KafkaLog(broker.bootstrap, f"msgtally-log-{uuid.uuid4().hex[:10]}")
    create_topic(log, partitions, retention_ms=3_600_000)
    return log


def high_watermarks(log: KafkaLog, count: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": log.bootstrap, "group.id": "watermarks"})
    try:
        return {
            p: int(reader.get_watermark_offsets(TopicPartition(log.topic, p), timeout=10)[1])
            for p in range(count)
        }
    finally:
        reader.close()


def committed(store: Engine) -> dict[int, int]:
    with store.connect() as conn:
        rows = conn.execute(select(partitions.c.part, partitions.c.next_offset))
        return {int(p): int(o) for p, o in rows}


def unadopted(store: Engine) -> dict[int, set[tuple[str, str]]]:
    """Per partition, the announced groups its last checkpoint does not expect
    yet. A group another partition announced reaches a partition through the
    store (a worker looks every second), and is back-filled there with a
    checkpoint: until then that partition does not owe it its ids."""
    from msgtally.reconcile import _machine
    from msgtally.store.tables import announced_groups, partition_checkpoints

    c = CONFIG
    with store.connect() as conn:
        announced = {(s, g) for s, g in conn.execute(
            select(announced_groups.c.stream, announced_groups.c.grp))}  # fmt: skip
        saved = conn.execute(select(partition_checkpoints.c.part, partition_checkpoints.c.body))
        out: dict[int, set[tuple[str, str]]] = {}
        for part, body in saved:
            machine = _machine.Machine(c.deadline, c.settle, c.remember, c.latency_buckets)
            machine.loads(body)
            expected = machine.expected()
            left = {(s, g) for s, g in announced if g not in expected.get(s, ())}
            if left:
                out[int(part)] = left
        return out


def wait_applied(store: Engine, log: KafkaLog, count: int, timeout: float = 120.0) -> None:
    """Until every partition's committed offset is the topic's end, and every
    partition has taken every announced group in (unadopted)."""
    want = high_watermarks(log, count)
    deadline = time.monotonic() + timeout
    while (got := committed(store)) != want or unadopted(store):
        assert time.monotonic() < deadline, (got, want, unadopted(store))
        time.sleep(0.1)


class WorkerThread:
    """A Worker stepping in a thread of the test process until `stop`."""

    def __init__(self, url: str, log: KafkaLog, **options: Any) -> None:
        self.store = open_store(url)
        # Leaving the group when stopped: the consumer closed, not left to the
        # test process's end (msgtally worker exits without leaving instead).
        options.setdefault("leave_group", True)
        self.worker = Worker(self.store, log, CONFIG, session_timeout=6.0, **options)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)
        self.store.dispose()


def buckets(store: Engine) -> dict[tuple[str, str, str], int]:
    b = latency_buckets
    with store.connect() as conn:
        rows = conn.execute(
            select(b.c.stream, b.c.grp, b.c.le, func.sum(b.c["count"]))
            .group_by(b.c.stream, b.c.grp, b.c.le)
        )  # fmt: skip
        return {(s, g, le): int(n) for s, g, le, n in rows if n}


def assert_same(got: Engine, want: Engine) -> None:
    """Every figure of `got` is `want`'s: SLIs, discrepancy ids of every kind,
    latency buckets, records missing."""
    a, b = figures(got), figures(want)
    assert set(a) == set(b), ({k: a[k] for k in set(a) - set(b)}, sorted(set(b) - set(a)))
    for key in b:
        for name, value in b[key].items():
            if name.startswith("latency_") and name != "latency_count" and value is not None:
                close = abs(a[key][name] - value) <= 1e-6 * max(1.0, abs(value))
                assert close, (key, name, a[key][name], value)
            else:
                assert a[key][name] == value, (key, name, a[key][name], value)
    for kind in ID_KINDS:
        assert discrepancy_ids(got, kind) == discrepancy_ids(want, kind), kind
    assert buckets(got) == buckets(want)
    assert missing(got) == missing(want)


def chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def read_topic(
    log: KafkaLog, count: int, start: dict[int, int], end: dict[int, int]
) -> list[tuple[str, list[str]]]:
    """The requests' slices in the topic between offsets `start` and `end` (per
    partition): (request id, its record ids) for each, heartbeats left out."""
    from confluent_kafka import Consumer, TopicPartition

    from msgtally.ingest.intake import logbody
    from msgtally.store.kafka_log import decode_message

    reader = Consumer({"bootstrap.servers": log.bootstrap, "group.id": "reader",
                       "enable.auto.commit": False})  # fmt: skip
    out: list[tuple[str, list[str]]] = []
    try:
        for p in range(count):
            if end[p] <= start[p]:
                continue
            reader.assign([TopicPartition(log.topic, p, start[p])])
            at = start[p]
            while at < end[p]:
                msg = reader.poll(10)
                assert msg is not None, f"partition {p}: nothing at offset {at}"
                if msg.error() is not None:
                    continue
                at = int(msg.offset() or 0) + 1
                message = decode_message(msg.value() or b"")
                if message.body is not None:
                    records = logbody.decode(message.body).records
                    out.append((message.request_id, [str(r.record_id) for r in records]))
    finally:
        reader.close()
    return out
