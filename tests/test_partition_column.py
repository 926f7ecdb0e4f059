"""The engine's output tables keep a row per partition of the Kafka log (`part`):
reads add them up, and a store made before the column gets it, its rows as
partition 0."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, inspect, select

from msgtally.names import TALLY_FIELDS
from msgtally.reconcile.outputs import write_in_flight, write_missing, write_pairs
from msgtally.slis.read.query import read_in_flight, read_missing, read_slis
from msgtally.store.db import open_store, write_tx
from msgtally.store.tables import PARTITIONED, TIMELINES, latency_buckets, partitions, tallies


def _pair(delivered: int, latency: float) -> tuple[object, ...]:
    counts = {"produced": delivered, "delivered": delivered, "latency_count": delivered}
    hist = (delivered, 0, 0)
    return ("s", "g", counts, latency * delivered, hist, {7: delivered})


def test_reads_add_up_the_partitions(store: Engine) -> None:
    buckets = (1.0, 5.0)
    with write_tx(store) as conn:
        write_pairs(conn, [_pair(2, 0.5)], buckets, 1000.0)  # type: ignore[list-item]
        write_pairs(conn, [_pair(3, 0.5)], buckets, 1000.0, part=5)  # type: ignore[list-item]
        write_missing(conn, {("s", "produce", ""): 4})
        write_missing(conn, {("s", "produce", ""): 6}, part=5)
        write_in_flight(conn, {("s", "g"): (1, 50.0)})
        write_in_flight(conn, {("s", "g"): (2, 40.0)}, part=5)
        write_in_flight(conn, {("s", "g"): (7, 30.0)}, part=6)
        write_in_flight(conn, {}, part=6)  # partition 6 has nothing in flight any more
    with store.connect() as conn:
        (sli,) = read_slis(conn, now=100.0)
        assert (sli.produced, sli.delivered, sli.latency_count) == (5, 5, 5)
        assert sli.latency_sum == 2.5
        assert sli.produce_records_missing == 10
        assert read_missing(conn) == {("s", "produce", ""): 10}
        ((stream, group, n, oldest),) = read_in_flight(conn)
        assert (stream, group, n, oldest) == ("s", "g", 3, 40.0)
        parts = sorted(r.part for r in conn.execute(select(tallies.c.part)))
        assert parts == [0, 5]


def test_a_store_from_before_gets_the_column(tmp_path: object) -> None:
    path = f"{tmp_path}/old.db"
    old = create_engine(f"sqlite:///{path}")
    counts = ", ".join(f"{n} BIGINT NOT NULL DEFAULT 0" for n in TALLY_FIELDS)
    with old.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE tallies (stream VARCHAR(256) NOT NULL, grp VARCHAR(256) NOT NULL, "
            f"{counts}, latency_sum FLOAT NOT NULL DEFAULT 0, PRIMARY KEY (stream, grp))"
        )
        conn.exec_driver_sql(
            "INSERT INTO tallies (stream, grp, produced, delivered) VALUES ('s', 'g', 9, 8)"
        )
    old.dispose()
    store = open_store(path)
    assert "part" in {c["name"] for c in inspect(store).get_columns("tallies")}
    with store.connect() as conn:
        (sli,) = read_slis(conn, now=0.0)
        assert (sli.produced, sli.delivered) == (9, 8)
        assert [r.part for r in conn.execute(select(tallies.c.part))] == [0]
    with write_tx(store) as conn:  # the new key: partition 0 adds to the old row
        write_pairs(conn, [_pair(1, 0.0)], (1.0, 5.0), 0.0)  # type: ignore[list-item]
    with store.connect() as conn:
        assert read_slis(conn, now=0.0)[0].produced == 10
    for name in PARTITIONED:
        assert "part" in {c["name"] for c in inspect(store).get_columns(name)}


def test_counters_add_rows_of_one_key_and_to_the_stored_ones(store: Engine) -> None:
    # PostgreSQL adds a tick's rows in one statement (every column an array, rows of
    # one key summed first); SQLite row by row: the same totals.
    buckets = (1.0, 5.0)
    with write_tx(store) as conn:
        write_pairs(conn, [_pair(2, 0.5), _pair(3, 1.0)], buckets, 1000.0)  # type: ignore[list-item]
    with write_tx(store) as conn:
        write_pairs(conn, [_pair(4, 0.25)], buckets, 1030.0, part=2)  # type: ignore[list-item]
        write_pairs(conn, [_pair(1, 2.0)], buckets, 1000.0)  # type: ignore[list-item]
    with store.connect() as conn:
        (sli,) = read_slis(conn, now=100.0)
        assert (sli.produced, sli.delivered, sli.latency_count) == (10, 10, 10)
        assert sli.latency_sum == 1.0 + 3.0 + 1.0 + 2.0
        rows = conn.execute(select(tallies.c.part, tallies.c.produced).order_by(tallies.c.part))
        assert [tuple(r) for r in rows] == [(0, 6), (2, 4)]
        minute = TIMELINES[0][0]
        at = conn.execute(select(minute.c.at, minute.c.produced).order_by(minute.c.at))
        assert [tuple(r) for r in at] == [(960, 6), (1020, 4)]
        le = conn.execute(
            select(latency_buckets.c.le, latency_buckets.c["count"])
            .where(latency_buckets.c.part == 0)
        )  # fmt: skip
        assert {r[0]: r[1] for r in le} == {"1.0": 6}


def test_a_partitions_table_from_before_gets_the_bookkeeping_columns(tmp_path: object) -> None:
    """A store whose partitions rows predate the engine's bookkeeping in them gets
    the columns, its rows kept: never committed, nothing counted, nothing known
    of the topic (the next commit records them)."""
    url = f"sqlite:///{tmp_path}/old.db"
    old = create_engine(url)
    with old.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE partitions (part INTEGER PRIMARY KEY, epoch BIGINT "
                             "NOT NULL, next_offset BIGINT NOT NULL, clock FLOAT NOT NULL, "
                             "owner VARCHAR(256) NOT NULL)")  # fmt: skip
        conn.exec_driver_sql("INSERT INTO partitions VALUES (3, 7, 120, 1500.5, 'w:1')")
    old.dispose()
    store = open_store(url)
    try:
        with store.connect() as conn:
            (row,) = conn.execute(select(partitions)).mappings().all()
        assert dict(row) == {
            "part": 3, "epoch": 7, "next_offset": 120, "clock": 1500.5, "owner": "w:1",
            "committed_at": None, "records": 0, "repeats": 0, "log_end": 0, "held_from": -1,
            "held_since": None,
        }  # fmt: skip
    finally:
        store.dispose()
