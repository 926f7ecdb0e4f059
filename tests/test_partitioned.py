"""The engine over the Kafka log (msgtally serve --log, msgtally worker): the
same figures as the single engine, exactly, on a real Kafka-protocol broker
(Tansu) and the real PostgreSQL."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import Engine, func, select

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.kafka_log import KafkaWriter, slices, split
from msgtally.ingest.intake.schema import Batch, parse_body
from msgtally.ingest.intake.writer import log_to, write_batch
from msgtally.names import TALLY_FIELDS
from msgtally.oracle import Record, missing_records, oracle
from msgtally.reconcile import _machine
from msgtally.reconcile.engine import Reconciler
from msgtally.reconcile.outputs import VERDICT_COLUMNS
from msgtally.reconcile.partitioned.partition import Fenced, Partition, commit
from msgtally.store.db import open_store
from msgtally.store.engine_facts import EngineFacts, engine_facts
from msgtally.store.held import log_held_since
from msgtally.store.kafka_log import (
    KafkaLog,
    KafkaLogError,
    decode_message,
    encode_message,
    open_log,
    parse_log_url,
    partition_of,
    sequence_partition,
)
from msgtally.store.tables import (
    announced_groups,
    logged_groups,
    partitions,
    records_missing,
    tallies,
    tally_minutes,
    verdicts,
)
from tests import partitioned_support
from tests.conftest import LiveCollector
from tests.harness import assert_discrepancies, assert_figures, figures, missing
from tests.kafka_broker import Tansu, started_broker
from tests.partitioned_reads import assert_reads_same
from tests.partitioned_sequences import Numbered, envelope, numbered, single_engine
from tests.partitioned_support import (
    CONFIG,
    WorkerThread,
    assert_same,
    batch_of,
    committed,
    history,
    new_topic,
    slices_sent,
    unadopted,
    wait_applied,
)


@pytest.fixture
def opened() -> Iterator[list[Engine]]:
    """Stores the test opens, disposed of at its end."""
    stores: list[Engine] = []
    yield stores
    for store in stores:
        store.dispose()


def _open(opened: list[Engine], url: str) -> Engine:
    opened.append(open_store(url))
    return opened[-1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    yield from started_broker(tmp_path_factory)


def test_the_partition_rule_is_stable_and_keeps_an_id_together() -> None:
    # zlib's CRC-32 of stream NUL id: the same in every process (not Python's hash()).
    assert partition_of("s", "m1", 64) == zlib.crc32(b"s\0m1") % 64
    assert partition_of("s", "m1", 1) == 0
    records = history(1, 60, 1000.0)[0]
    parts = split(batch_of(records).records, 7)
    assert sum(len(v) for v in parts.values()) == len(records)
    for p, rs in parts.items():
        assert {partition_of(r.stream, r.message_id, 7) for r in rs} == {p}


def test_log_urls_and_messages() -> None:
    assert parse_log_url("kafka://h:9092,k:9092/tally") == KafkaLog("h:9092,k:9092", "tally")
    for bad in ("kafka://h:9092", "kafka:///t", "http://h/t", "kafka://h/a/b"):
        with pytest.raises(KafkaLogError, match="kafka://HOST:PORT/TOPIC"):
            parse_log_url(bad)
    raw = encode_message("ab12", 1234.5, b"body")
    assert decode_message(raw) == ("ab12", 1234.5, b"body")
    assert decode_message(encode_message("", 9.0, None)).body is None
    with pytest.raises(KafkaLogError, match="not a msgtally log message"):
        decode_message(b"\x01garbage")


def test_two_collectors_two_workers_give_the_single_engines_figures(
    broker: Tansu, pg_url: str, tmp_path: Path, opened: list[Engine]
) -> None:
    log = new_topic(broker, 4)
    collectors = [_open(opened, pg_url) for _ in range(2)]
    count = open_log(collectors[0], str(log))[1]
    assert count == 4 and open_log(collectors[1], str(log))[1] == 4
    writers = [KafkaWriter(log, count).start() for _ in collectors]
    for store, writer in zip(collectors, writers, strict=True):
        log_to(store, writer)
    workers = [WorkerThread(pg_url, log) for _ in range(2)]
    started = time.time()
    requests = history(7, 300, time.time() - 2000)
    # From senders that number their records, with holes, then their last marks.
    sent, tails = numbered(requests, seed=7)
    sent.append(Numbered([], tails))
    try:
        one, two = (LiveCollector(store, CONFIG) for store in collectors)
        with one, two:
            for i, request in enumerate(sent):
                url = (one, two)[i % 2].url
                answer = httpx.post(f"{url}/v1/records", json=envelope(request), timeout=30)
                assert answer.status_code == 200, answer.text
        final = time.time() + 10_000  # past every deadline: every id judged
        writers[0].beat(final)
        for writer in writers:
            writer.close()
        wait_applied(collectors[0], log, count)
    finally:
        for w in workers:
            w.stop()
        for store in collectors:
            log_to(store, None)
    single = _open(opened, f"sqlite:///{tmp_path / 'single.db'}")
    single_engine(single, sent, CONFIG, final)
    records = [r for request in sent for r in request.records]
    want = oracle(records, deadline=CONFIG.deadline, stream_deadlines=CONFIG.stream_deadlines,
                  expected_groups=CONFIG.expected_groups)  # fmt: skip
    assert_figures(figures(single), want)
    assert_figures(figures(collectors[0]), want)
    assert_discrepancies(collectors[0], want)
    assert_same(collectors[0], single)  # records missing too
    assert {g for _s, g in figures(collectors[0])} >= {"cfg", "g4"}
    with collectors[0].connect() as conn:  # every group came announced in the log
        logged = {tuple(r) for r in conn.execute(select(logged_groups))}
        assert logged == {(r.stream, r.group) for r in records if r.kind == "consume"}
        assert conn.execute(select(announced_groups.c.grp)).scalars().all() == ["cfg"]
    # The engine's own bookkeeping, summed over the partitions' rows: the single
    # engine's records applied and repeated (the resends), nothing left in the
    # topic, and a last pass (the oldest partition's last commit) of this run.
    ours, theirs = _engine_facts(collectors[0]), _engine_facts(single)
    assert (ours.applied, ours.repeated) == (theirs.applied, theirs.repeated)
    assert ours.applied == len(records)  # every record sent, resent ones too
    assert ours.repeated > 0 and (ours.backlog, theirs.backlog) == (0, 0)
    assert ours.last_pass is not None and started < ours.last_pass < time.time()
    # What the log holds: from the latest of the partitions' first messages on.
    assert _held_since(collectors[0]) == max(_first_receipts(log, count).values())
    # Holes found exactly, each sequence whole on the partition that owns it: the
    # count from the numbering itself, over several partitions, every kind.
    assert missing(collectors[0]) == missing_records(records, tails)
    assert len(missing(collectors[0])) >= 6
    owners = {sequence_partition(m.producer, m.stream, m.kind, m.group, count) for m in tails}
    assert owners == set(range(count))
    assert len(_missing_parts(collectors[0])) >= 3
    # The rows themselves, as the workers' commits wrote them (arrays unnested,
    # verdicts by COPY) and as the single engine did: every verdict row of the
    # workers is the single engine's, the back-filled losses of g4 (the group that
    # appears last) too, and every row of a discrepant id. The single engine, a
    # batch run here, still holds in memory the ids g4's records name, and writes
    # the plain deliveries of their other groups too; the workers, live, had
    # forgotten them (a group without a row had the plain delivery: no read
    # differs). With the same clocks the rows are the same: the test below.
    ours, theirs = set(_verdict_rows(collectors[0])), set(_verdict_rows(single))
    assert ours <= theirs
    assert {r for r in theirs - ours if r[3] != "delivered"} == set()
    assert len({r for r in ours if r[3] != "delivered"}) > 50
    assert len({r for r in ours if r[2] == "g4" and r[3] == "lost"}) > 20
    got, want = _tally_rows(collectors[0]), _tally_rows(single)
    assert set(got) == set(want)
    for key, row in want.items():
        assert got[key][:-1] == row[:-1], key  # every count exactly
        assert got[key][-1] == pytest.approx(row[-1], rel=1e-12), key  # latency_sum


def test_a_partition_taken_over_replays_its_sequences_and_counts_each_hole_once(
    broker: Tansu, pg_url: str, opened: list[Engine]
) -> None:
    """An owner commits a checkpoint, then figures past it, and goes; the next one
    loads the checkpoint and replays what the first committed without writing it
    again. The clocks are the messages' (every request's receipt time, and a
    heartbeat at it), so the replay declares the same holes at the same messages:
    each counted once, the numbering's own count in the end."""
    store = _open(opened, pg_url)
    log = new_topic(broker, 3)
    count = open_log(store, str(log))[1]
    sent, tails = numbered(history(11, 200, 5000.0), seed=11, lose=0.08)
    sent.append(Numbered([], tails))
    writer = KafkaWriter(log, count, heartbeat_every=3600).start()  # beats by hand
    produced = dict.fromkeys(range(count), len(sent) + 1)  # a heartbeat each, and the last
    known: set[tuple[str, str]] = set()
    for i, request in enumerate(sent):
        batch = parse_body(json.dumps(envelope(request)).encode())
        writer.append(batch.records, batch.sequences, 6000.0 + i)
        writer.beat(6000.0 + i)  # every partition's clock moves with the request's
        for part in slices_sent(known, batch.records, batch.sequences, count):
            produced[part] += 1
    writer.beat(100_000.0)  # past every deadline: every hole settled
    writer.close()
    halfway: dict[tuple[str, str, str], int] = {}
    for part in range(count):
        messages = _messages(log, part, produced[part])
        scan = _scan_of(messages)
        first = Partition.take(store, CONFIG, part, "first")
        for offset, raw in messages[: len(messages) // 2]:
            first.feed(offset, raw, scan)
        first.commit(checkpoint=True)
        for offset, raw in messages[len(messages) // 2 : 3 * len(messages) // 4]:
            first.feed(offset, raw, scan)
        first.commit()  # figures past the checkpoint: the next owner replays them
        second = Partition.take(store, CONFIG, part, "second")
        assert second.replaying
        for offset, raw in messages[second.next_offset :]:
            second.feed(offset, raw, scan)
        second.commit()
        if part == 0:
            halfway = missing(store)
    records = [r for request in sent for r in request.records]
    assert missing(store) == missing_records(records, tails)
    assert 0 < sum(halfway.values()) < sum(missing(store).values())


def _messages(log: KafkaLog, part: int, n: int) -> list[tuple[int, bytes]]:
    """The partition's first `n` messages, with their offsets (Tansu's high
    watermark may lag the last acknowledged message: the count is the test's)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": log.bootstrap, "group.id": "reader"})
    try:
        reader.assign([TopicPartition(log.topic, part, OFFSET_BEGINNING)])
        out: list[tuple[int, bytes]] = []
        while len(out) < n:
            msg = reader.poll(10.0)
            assert msg is not None, f"partition {part}: {len(out)} of {n} messages read"
            if msg.error() is None:
                out.append((int(msg.offset() or 0), msg.value() or b""))
        assert [o for o, _ in out] == list(range(n))
        return out
    finally:
        reader.close()


def _scan_of(messages: list[tuple[int, bytes]]) -> Any:
    return lambda _part, before: (raw for offset, raw in messages if offset < before)


def _engine_facts(store: Engine) -> EngineFacts:
    with store.connect() as conn:
        return engine_facts(conn)


def _held_since(store: Engine) -> float | None:
    with store.connect() as conn:
        return log_held_since(conn)


def _first_receipts(log: KafkaLog, count: int) -> dict[int, float]:
    """The receipt time of each partition's first message in the topic."""
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": log.bootstrap, "group.id": "first",
                       "enable.auto.commit": False})  # fmt: skip
    out: dict[int, float] = {}
    try:
        for p in range(count):
            reader.assign([TopicPartition(log.topic, p, 0)])
            msg = reader.poll(10)
            assert msg is not None and msg.error() is None and msg.offset() == 0, p
            out[p] = decode_message(msg.value() or b"").received_at
    finally:
        reader.close()
    return out


def test_a_worker_reads_the_oldest_message_held_where_the_store_has_none(
    broker: Tansu, pg_url: str, opened: list[Engine]
) -> None:
    """A store whose partitions do not know their oldest message held (made before
    they recorded it): a worker that takes them from their checkpoints, past the
    topic's first message, reads each partition's oldest message from the topic
    once the consumer's watermarks show the topic holds it, and its commit records it."""
    store = _open(opened, pg_url)
    log = new_topic(broker, 3)
    count = open_log(store, str(log))[1]
    writer = KafkaWriter(log, count, heartbeat_every=3600).start()  # beats by hand
    for request in history(3, 60, time.time() - 600):
        writer.append(batch_of(request).records, None, time.time())
    first = WorkerThread(pg_url, log)
    try:
        wait_applied(store, log, count)
    finally:
        first.stop()
    want = max(_first_receipts(log, count).values())
    assert _held_since(store) == want
    with store.begin() as conn:  # as a store from before has them
        conn.execute(partitions.update().values(held_from=-1, held_since=None))
    assert _held_since(store) is None
    second = WorkerThread(pg_url, log)
    try:
        writer.beat(time.time())  # something to commit, past the checkpoints
        deadline = time.monotonic() + 60
        while _held_since(store) is None:
            assert time.monotonic() < deadline, "the oldest messages held never recorded"
            time.sleep(0.1)
    finally:
        second.stop()
        writer.close()
    assert _held_since(store) == want


def _missing_parts(store: Engine) -> set[int]:
    """The partitions that declared records missing."""
    with store.connect() as conn:
        return {int(p) for (p,) in conn.execute(select(records_missing.c.part).distinct())}


def _verdict_rows(store: Engine) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        columns = [verdicts.c[c] for c in VERDICT_COLUMNS]
        return [tuple(r) for r in conn.execute(select(*columns).order_by(*columns[:3]))]


def _tally_rows(store: Engine) -> dict[tuple[str, str], tuple[float, ...]]:
    """Tallies summed over the partitions: the counts, then latency_sum."""
    with store.connect() as conn:
        sums = [func.sum(tallies.c[f]) for f in (*TALLY_FIELDS, "latency_sum")]
        rows = conn.execute(
            select(tallies.c.stream, tallies.c.grp, *sums).group_by(tallies.c.stream, tallies.c.grp)
        )  # fmt: skip
        return {(r[0], r[1]): tuple(map(float, r[2:])) for r in rows}


def test_a_topic_of_another_partition_count_is_refused(
    broker: Tansu, pg_url: str, opened: list[Engine]
) -> None:
    store = _open(opened, pg_url)
    open_log(store, str(new_topic(broker, 3)))
    other = new_topic(broker, 5)
    with pytest.raises(KafkaLogError, match="has 5 partitions but this store was filled from 3"):
        open_log(store, str(other))
    with pytest.raises(KafkaLogError, match="no such topic; create it first"):
        open_log(store, f"kafka://{broker.bootstrap}/nothing-here")


def test_a_worker_that_lost_its_partition_commits_nothing(
    broker: Tansu, pg_url: str, opened: list[Engine]
) -> None:
    store = _open(opened, pg_url)
    log = new_topic(broker, 2)
    open_log(store, str(log))
    old = Partition.take(store, CONFIG, 1, "old")
    new = Partition.take(store, CONFIG, 1, "new")  # the group moved it: a new epoch
    body = encode_message("r", 5000.0, None)
    old.feed(0, body, lambda _p, _o: iter(()))
    with pytest.raises(Fenced):
        old.commit()
    with store.connect() as conn:
        row = conn.execute(select(partitions).where(partitions.c.part == 1)).one()
    assert (row.next_offset, row.owner, row.epoch) == (0, "new", new.epoch)
    new.feed(0, body, lambda _p, _o: iter(()))
    new.commit()  # the new owner's commit goes in
    with store.connect() as conn:
        row = conn.execute(select(partitions).where(partitions.c.part == 1)).one()
    assert (row.next_offset, row.clock) == (1, 5000.0)


def test_a_commit_of_several_partitions_writes_those_still_its_own(
    broker: Tansu, pg_url: str, opened: list[Engine]
) -> None:
    # A worker commits every partition that changed in one transaction: one the
    # group has moved to another worker is fenced (nothing of it written, the
    # others' commits go in), and the counters of those moved are added under
    # the lowest of them (its row is locked by the transaction).
    store = _open(opened, pg_url)
    log = new_topic(broker, 3)
    open_log(store, str(log))
    parts = [Partition.take(store, CONFIG, p, "old") for p in range(3)]
    Partition.take(store, CONFIG, 0, "new")  # the group moved partition 0: a new epoch
    records = [r for request in history(3, 60, 4000.0) for r in batch_of(request).records]
    bodies = slices(records, None, 3)
    assert set(bodies) == {0, 1, 2}
    for part in parts:
        part.feed(0, encode_message("r", 4100.0, bodies[part.part]), lambda _p, _o: iter(()))
    assert commit(parts) == [parts[0]]
    with store.connect() as conn:
        rows = {r.part: r for r in conn.execute(select(partitions))}
        produced = dict(conn.execute(
            select(tallies.c.part, func.sum(tallies.c.produced)).group_by(tallies.c.part)).all())
    assert (rows[0].next_offset, rows[0].owner) == (0, "new")
    assert [rows[p].next_offset for p in (1, 2)] == [1, 1]
    # The same bodies through fresh machines, as a partition feeds them (its
    # deadlines set, its new groups expected first): what partitions 1 and 2 owe.
    want = 0
    for p in (1, 2):
        c = CONFIG
        core = _machine.Machine(c.deadline, c.settle, c.remember, c.latency_buckets)
        for stream, seconds in c.stream_deadlines.items():
            core.set_deadline(stream, seconds)
        new, _rejected = core.screen([bodies[p]])
        for stream in {s for s, _g in new}:
            groups = [g for s, g in new if s == stream]
            core.expect_groups(stream, groups)
            core.backfill_finish(stream, groups)
        core.apply(bodies[p], 4100.0)
        core.advance(4100.0, 4100.0)
        want += sum(counts.get("produced", 0) for _s, _g, counts, *_ in core.drain()[0])
    assert want > 0
    assert {p: int(n) for p, n in produced.items()} == {1: want}
    assert not parts[1].changed and not parts[2].changed


def test_a_collector_announces_a_group_it_does_not_know_to_every_partition_once(
    broker: Tansu, pg_url: str, opened: list[Engine]
) -> None:
    """The first request naming a group sends every partition a slice announcing
    it (no records on most), and the group goes to the store with the request;
    neither that collector nor another one that reads the store announces it
    again, nor a configured group (the store's announced groups)."""
    from msgtally.reconcile.partitioned.partition import announce

    store = _open(opened, pg_url)
    log = new_topic(broker, 3)
    count = open_log(store, str(log))[1]
    announce(store, [("s1", "cfg")])

    def request(mid: str, group: str) -> list[Record]:
        return [Record("s1", "produce", mid, 10.0), Record("s1", "consume", mid, 11.0, group)]

    first, other = (KafkaWriter(log, count, heartbeat_every=3600).start() for _ in range(2))
    sends = [("m1", "g", first), ("m2", "g", first), ("m3", "g", other), ("m4", "cfg", first)]
    produced = dict.fromkeys(range(count), 0)
    try:
        for i, (mid, group, writer) in enumerate(sends):
            log_to(store, writer)
            write_batch(store, batch_of(request(mid, group)), received_at=100.0 + i)
            for p in range(count) if i == 0 else [partition_of("s1", mid, count)]:
                produced[p] += 1
        first.beat(999.0)  # last on every partition: nothing more was sent before it
    finally:
        log_to(store, None)
        first.close()
        other.close()
    announced = []
    for part in range(count):
        *messages, (_offset, last) = _messages(log, part, produced[part] + 1)
        assert decode_message(last) == ("", 999.0, None), part
        for _offset, raw in messages:
            message = decode_message(raw)
            assert message.body is not None
            logged = logbody.decode(message.body)
            ids = {r.message_id for r in logged.records}
            announced.append((part, message.received_at, logged.groups, ids))
    home = partition_of("s1", "m1", count)
    assert sorted(a[:3] for a in announced if a[2]) == [(p, 100.0, [("s1", "g")]) for p in range(3)]
    assert {a[0]: a[3] for a in announced if a[2]}[home] == {"m1"}
    assert all(not a[3] for a in announced if a[2] and a[0] != home)  # the news alone
    with store.connect() as conn:
        assert [tuple(r) for r in conn.execute(select(logged_groups))] == [("s1", "g")]


def _minute_rows(store: Engine) -> dict[tuple[int, str, str], tuple[float, ...]]:
    """The per-minute tally rows summed over the partitions: the counts, then latency_sum."""
    t = tally_minutes
    with store.connect() as conn:
        sums = [func.sum(t.c[f]) for f in (*TALLY_FIELDS, "latency_sum")]
        rows = conn.execute(select(t.c.at, t.c.stream, t.c.grp, *sums)
                            .group_by(t.c.at, t.c.stream, t.c.grp))  # fmt: skip
        out = {(int(r[0]), r[1], r[2]): tuple(float(x) for x in r[3:]) for r in rows}
    return {k: (*v[:-1], round(v[-1], 6)) for k, v in out.items() if any(v)}


def _sent_live(
    log: KafkaLog, count: int, batches: list[Batch], clocks: list[float], single: Engine
) -> dict[int, int]:
    """Each request produced to the topic at its receipt clock (every partition's
    clock beaten there) and logged for the single engine, which ticks at each
    receipt, as live; at last both 900 s past the last clock, past every
    deadline. The messages each partition got."""
    final = clocks[-1] + 900
    writer = KafkaWriter(log, count, heartbeat_every=3600).start()  # beats by hand
    produced = dict.fromkeys(range(count), len(batches) + 1)  # a heartbeat each, and the last
    known: set[tuple[str, str]] = set()
    with Reconciler(single, CONFIG) as engine:
        for batch, at in zip(batches, clocks, strict=True):
            writer.append(batch.records, batch.sequences, at)
            writer.beat(at)
            for part in slices_sent(known, batch.records, batch.sequences, count):
                produced[part] += 1
            write_batch(single, batch, received_at=at)
            engine.catch_up(at, final=False)
        writer.beat(final)
        writer.close()
        engine.catch_up(final, final=False)
    return produced


def _caught_up(store: Engine, url: str, log: KafkaLog, produced: dict[int, int]) -> None:
    """Two workers on the whole backlog at once, until it is committed."""
    workers = [WorkerThread(url, log) for _ in range(2)]
    try:
        _until_committed(store, produced)
    finally:
        for w in workers:
            w.stop()


def _until_committed(store: Engine, produced: dict[int, int]) -> None:
    """Until every partition committed the messages the test counted (Tansu's high
    watermark may lag the last) and adopted every group, for two minutes at most."""
    deadline = time.monotonic() + 120
    while committed(store) != produced or unadopted(store):
        assert time.monotonic() < deadline, (committed(store), produced, unadopted(store))
        time.sleep(0.1)


def test_a_group_first_seen_mid_history_is_judged_at_its_clock_on_every_partition(
    broker: Tansu, pg_url: str, tmp_path: Path, opened: list[Engine]
) -> None:
    """A consumer group, solo, first named halfway through a history received over
    minutes, by consumes that all land on partition 0: the collector announces
    it to every partition at that request's clock (once: the later requests
    announce nothing), and each partition back-fills it there. Workers that
    catch up on the whole topic at once write every per-minute row, solo's
    included, where the single engine, ticking at each receipt, writes it."""
    parts = 4
    store = _open(opened, pg_url)
    log = new_topic(broker, parts)
    count = open_log(store, str(log))[1]
    base = (time.time() // 3600 - 2) * 3600  # on an hour, ~2 h ago
    half = history(21, 160, base)
    requests = _with_solo(half, parts, len(half) // 2)
    first_solo = next(i for i, q in enumerate(requests) if any(r.group == "solo" for r in q))
    clocks = [base + 60 + 37 * i for i in range(len(requests))]  # over ~12 minutes
    single = _open(opened, f"sqlite:///{tmp_path / 'single.db'}")
    produced = _sent_live(log, count, [batch_of(r) for r in requests], clocks, single)
    # solo announced once on every partition, at its first request's clock
    for part in range(count):
        announced = [
            (decode_message(raw).received_at, logbody.decode(body).groups)
            for _offset, raw in _messages(log, part, produced[part])
            if (body := decode_message(raw).body) is not None
            and ("s1", "solo") in (logbody.decode(body).groups or ())
        ]  # fmt: skip
        assert announced == [(clocks[first_solo], [("s1", "solo")])], part
    _caught_up(store, pg_url, log, produced)
    assert_same(store, single)
    got, want = _minute_rows(store), _minute_rows(single)
    assert {k for k in want if k[2] == "solo"} == {k for k in got if k[2] == "solo"}
    assert len({k[0] for k in want if k[2] == "solo"}) >= 2  # judged over several minutes
    assert got == want
    solo = figures(store)[("s1", "solo")]
    assert solo["lost"] > 0 and solo["delivered"] > 0
    with store.connect() as conn:  # the log told the partitions: nothing through the store
        assert conn.execute(select(announced_groups.c.grp)).scalars().all() == ["cfg"]


@pytest.mark.slow
def test_windowed_reads_are_the_single_engines(
    broker: Tansu, pg_url: str, tmp_path: Path, opened: list[Engine]
) -> None:
    """Requests received minutes apart, across an hour, hours ago (the receipt
    clocks the test's, every partition's clock moved with each): workers that
    catch up on the whole topic at once write every per-minute and per-hour row
    where the single engine, ticking at each receipt, writes it. Every read is
    the same: windows, series, objectives, status rows, /metrics, the report
    (but for the engine's bookkeeping, which tests.partitioned_reads names). g4,
    a group that first appears in the last request, on a few partitions, is
    announced by the collector to every partition at that request's clock: its
    windowed rows are the single engine's too."""
    store = _open(opened, pg_url)
    log = new_topic(broker, 4)
    count = open_log(store, str(log))[1]
    base = (time.time() // 3600 - 3) * 3600 - 600  # ten minutes before an hour, ~3 h ago
    sent, tails = numbered(history(13, 300, base), seed=13)
    sent.append(Numbered([], tails))
    clocks = [base + 90 + 41 * i for i in range(len(sent))]  # over ~30 minutes
    single = _open(opened, f"sqlite:///{tmp_path / 'single.db'}")
    batches = [parse_body(json.dumps(envelope(request)).encode()) for request in sent]
    produced = _sent_live(log, count, batches, clocks, single)
    _caught_up(store, pg_url, log, produced)
    # Resends come after their ids' verdicts here, and after the ids are forgotten:
    # both engines count them on the verdict rows kept (not the oracle's one shot).
    assert_same(store, single)
    assert set(_verdict_rows(store)) == set(_verdict_rows(single))
    with store.connect() as conn:  # the history spread over many minutes, both hours
        ats = {int(a) for (a,) in conn.execute(select(tally_minutes.c.at).distinct())}
    assert len(ats) >= 10 and len({a // 3600 for a in ats}) == 2
    assert_reads_same(store, pg_url, single, f"sqlite:///{tmp_path / 'single.db'}")


def test_a_back_fill_reads_the_partition_once_for_every_stream_and_logs_its_progress(
    broker: Tansu, pg_url: str, opened: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """Groups new on two streams at once: one pass over the partition's messages
    serves both, a line every 1000 messages says how far it is (as the single
    engine's back-fill does), and every id produced before is owed to each."""
    store = _open(opened, pg_url)
    log = new_topic(broker, 1)
    open_log(store, str(log))
    messages = []
    for i in range(2500):  # an id of each stream per message, consumed by g1
        records = [
            {"stream": s, "kind": k, "message_id": f"m{i}", "ts": 5000.0 + i, "group": g}
            for s in ("s1", "s2")
            for k, g in (("produce", ""), ("consume", "g1"))
        ]  # fmt: skip
        body = msgspec.msgpack.encode(
            (2, None, [{k: v for k, v in r.items() if v} for r in records])
        )
        messages.append(encode_message(f"r{i}", 5000.0 + i, body))
    scans: list[int] = []

    def scan(_part: int, before: int) -> Iterator[bytes]:
        scans.append(before)
        return (raw for raw in messages[:before])

    part = Partition.take(store, CONFIG, 0, "w")
    for offset, raw in enumerate(messages):
        part.feed(offset, raw, scan)
    assert scans == []  # g1 came with the first message: nothing before it to scan
    caplog.set_level(logging.INFO, logger="msgtally.reconcile.partitioned.partition")
    owed = part.expect([("s1", "late"), ("s2", "late"), ("s2", "later")], scan)
    assert scans == [2500]
    progress = [r.getMessage() for r in caplog.records if "back-filling" in r.getMessage()]
    assert progress == [f"partition 0: back-filling 3 new group(s): {n} of 2500 messages"
                        for n in (1000, 2000)]  # fmt: skip
    assert 0 < owed < 3 * 2500  # the others in memory still, judged when due
    part.feed(len(messages), encode_message("", 100_000.0, None), scan)  # past every deadline
    part.commit()
    got = figures(store)
    for pair in (("s1", "late"), ("s2", "late"), ("s2", "later")):
        assert (got[pair]["produced"], got[pair]["lost"]) == (2500, 2500), pair
    assert (got[("s1", "g1")]["produced"], got[("s1", "g1")]["delivered"]) == (2500, 2500)


def _with_solo(requests: list[list[Record]], parts: int, at: int) -> list[list[Record]]:
    """The requests, from the one at index `at` on with a consumer group, solo,
    whose consume records all land on partition 0: it consumes only the ids of
    s1 that hash there."""

    def with_solo(request: list[Record]) -> list[Record]:
        solo = [
            Record("s1", "consume", r.message_id, r.ts + 0.5, "solo",
                   record_id=f"{r.message_id}/solo")
            for r in request
            if r.kind == "produce" and r.stream == "s1"
            and partition_of("s1", r.message_id, parts) == 0
        ]  # fmt: skip
        return [*request, *solo]

    out = [*requests[:at], *(with_solo(r) for r in requests[at:])]
    seen = {partition_of(r.stream, r.message_id, parts) for q in out for r in q
            if r.group == "solo"}  # fmt: skip
    assert seen == {0}
    return out


def test_a_group_no_collector_announced_reaches_every_partition_through_the_store(
    broker: Tansu, pg_url: str, tmp_path: Path, opened: list[Engine]
) -> None:
    """A topic written by collectors from before groups were announced in the log
    (slices of version 2 only): a consumer group, solo, whose consume records
    all land on partition 0 is owed every id produced on s1, on every
    partition: the others learn of it through the store (announced_groups),
    each back-fills its own ids from the topic (those produced before solo
    first appeared) and owes it the ids produced after. Every figure is the
    single engine's and the oracle's (over all time: the windows are not, the
    other partitions back-fill at their clock when they learn of it)."""
    from confluent_kafka import Producer

    parts = 4
    store = _open(opened, pg_url)
    log = new_topic(broker, parts)
    open_log(store, str(log))
    base = history(18, 400, time.time() - 2000)
    requests = _with_solo(base, parts, len(base) // 3)  # a third of the way in
    old = Producer({"bootstrap.servers": log.bootstrap, "enable.idempotence": True})
    produced = dict.fromkeys(range(parts), 1)  # the last heartbeat
    workers = [WorkerThread(pg_url, log) for _ in range(2)]
    try:
        for i, request in enumerate(requests):
            for p, body in slices(batch_of(request).records, None, parts).items():
                old.produce(log.topic, encode_message(f"r{i}", time.time(), body), partition=p)
                produced[p] += 1
        final = time.time() + 10_000
        for p in range(parts):
            old.produce(log.topic, encode_message("", final, None), partition=p)
        assert old.flush(30) == 0
        _until_committed(store, produced)
    finally:
        for w in workers:
            w.stop()
    partitioned_support.assert_exact(store, requests, final, f"sqlite:///{tmp_path / 'single.db'}")
    sent = [r for request in requests for r in request]
    solo = figures(store)[("s1", "solo")]
    on_0 = {r.message_id for r in sent if r.stream == "s1" and r.kind == "produce"
            and partition_of("s1", r.message_id, parts) == 0}  # fmt: skip
    assert solo["produced"] > 2 * len(on_0)  # owed by every partition, not 0's alone
    assert 0 < solo["delivered"] <= len(on_0)
