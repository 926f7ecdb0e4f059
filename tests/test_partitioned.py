"""The engine over the Kafka log (msgtally serve --log, msgtally worker): the
same figures as the single engine, exactly, on a real Kafka-protocol broker
(Tansu) and the real PostgreSQL."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.kafka_log import KafkaWriter, split
from msgtally.ingest.intake.writer import log_to
from msgtally.ingest.shim.wire import record_to_json
from msgtally.names import TALLY_FIELDS
from msgtally.oracle import oracle
from msgtally.reconcile import _machine
from msgtally.reconcile.outputs import VERDICT_COLUMNS
from msgtally.reconcile.partitioned.partition import Fenced, Partition, commit
from msgtally.store.db import open_store
from msgtally.store.kafka_log import (
    KafkaLog,
    KafkaLogError,
    decode_message,
    encode_message,
    open_log,
    parse_log_url,
    partition_of,
)
from msgtally.store.tables import partitions, tallies, verdicts
from tests.conftest import LiveCollector
from tests.harness import assert_discrepancies, assert_figures, figures
from tests.kafka_broker import Tansu, started_broker
from tests.partitioned_support import (
    CONFIG,
    WorkerThread,
    assert_same,
    batch_of,
    history,
    new_topic,
    single_engine,
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
    requests = history(7, 300, time.time() - 2000)
    try:
        one, two = (LiveCollector(store, CONFIG) for store in collectors)
        with one, two:
            for i, request in enumerate(requests):
                url = (one, two)[i % 2].url
                body = [record_to_json(r) for r in request]
                answer = httpx.post(f"{url}/v1/records", json=body, timeout=30)
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
    single_engine(single, requests, final)
    sent = [r for request in requests for r in request]
    want = oracle(sent, deadline=CONFIG.deadline, stream_deadlines=CONFIG.stream_deadlines,
                  expected_groups=CONFIG.expected_groups)  # fmt: skip
    assert_figures(figures(single), want)
    assert_figures(figures(collectors[0]), want)
    assert_discrepancies(collectors[0], want)
    assert_same(collectors[0], single)
    assert {g for _s, g in figures(collectors[0])} >= {"cfg", "g4"}
    # The rows themselves, as the workers' commits wrote them (arrays unnested,
    # verdicts by COPY) and as the single engine did. Every verdict row of the
    # workers is the single engine's, and every row of a discrepant id, outside
    # the back-fill of g4 (the group that appears last): there the two engines'
    # rows differ in what no read shows (max_attempt 0 against 1 on back-filled
    # losses), and the single engine keeps rows of a few delivered ids that the
    # workers do not; figures and reports are equal (assert_same).
    backfilled = {(r.stream, r.message_id) for r in requests[-1]}

    def outside(store: Engine) -> set[tuple[Any, ...]]:
        rows = _verdict_rows(store)
        return {r for r in rows if r[2] != "g4" and (r[0], r[1]) not in backfilled}

    ours, theirs = outside(collectors[0]), outside(single)
    assert ours <= theirs
    assert {r for r in theirs - ours if r[3] != "delivered"} == set()
    assert len({r for r in ours if r[3] != "delivered"}) > 50
    got, want = _tally_rows(collectors[0]), _tally_rows(single)
    assert set(got) == set(want)
    for key, row in want.items():
        assert got[key][:-1] == row[:-1], key  # every count exactly
        assert got[key][-1] == pytest.approx(row[-1], rel=1e-12), key  # latency_sum


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
    bodies = {p: logbody.encode(rs, None) for p, rs in split(records, 3).items()}
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
