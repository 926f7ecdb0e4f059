"""What a tick writes: the engine's drained changes, added to the store.

Tallies, histogram buckets, sketch bins, missing records and failed records
by error class move by the
deltas of the tick (tallies and buckets also in the rows of the minute and
the hour of the tick's `now`, which windowed figures add up); verdict rows
replace the previous state of their (stream, id, group); the in-flight gauge
is replaced whole. All of it in the tick's transaction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, case, delete, select, tuple_

from msgtally.names import TALLY_FIELDS, bucket_label
from msgtally.store.db import upsert
from msgtally.store.tables import (
    TIMELINES,
    delivery_errors,
    in_flight,
    latency_buckets,
    latency_sketch,
    meta,
    records_missing,
    tallies,
    verdicts,
)

# A drained pair: (stream, group, {tally: delta}, latency_sum, histogram, sketch bins).
Pair = tuple[str, str, Mapping[str, int], float, Sequence[int], Mapping[int, int]]
VERDICT_COLUMNS = (
    "stream",
    "message_id",
    "grp",
    "cls",
    "acked",
    "p_any",
    "late",
    "t0",
    "deadline",
    "n",
    "ok",
    "max_attempt",
    "dl",
    "latency",
)


def _add(conn: Connection, table: Any, key: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x, for counters."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _add_arrays(conn, table, key, rows)
        return
    stmt = upsert(conn, table)
    values = [name for name in rows[0] if name not in key]
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key), set_={n: table.c[n] + stmt.excluded[n] for n in values}
    )
    conn.execute(stmt, rows)


def _add_arrays(
    conn: Connection, table: Any, key: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    """`_add` on PostgreSQL in one statement whatever the rows: each column sent as
    one array, unnested server-side, rows of one key summed first (a statement may
    not update a row twice). A tick of a busy partition adds hundreds of sketch
    and bucket rows, and one parameter set per row cost more than the state
    machine did (bench/distributed.py)."""
    names = tuple(rows[0])
    sql = _add_sql(conn.dialect, table, tuple(key), names)
    columns = tuple([row[n] for row in rows] for n in names)
    conn.exec_driver_sql(sql, columns)


@functools.lru_cache(maxsize=64)
def _add_sql(dialect: Any, table: Any, key: tuple[str, ...], names: tuple[str, ...]) -> str:
    """The statement of `_add_arrays`, made once per table and columns (making it
    cost as much as running it)."""
    q = dialect.identifier_preparer.quote
    to, keys = q(table.name), ", ".join(q(n) for n in key)
    values = [q(n) for n in names if n not in key]
    arrays = ", ".join(f"%s::{table.c[n].type.compile(dialect=dialect)}[]" for n in names)
    return (
        f"INSERT INTO {to} ({keys}, {', '.join(values)}) "
        f"SELECT {keys}, {', '.join(f'sum({v})' for v in values)} "
        f"FROM unnest({arrays}) AS u({', '.join(q(n) for n in names)}) "
        f"GROUP BY {keys} ON CONFLICT ({keys}) DO UPDATE SET "
        + ", ".join(f"{v} = {to}.{v} + excluded.{v}" for v in values)
    )


def write_pairs(
    conn: Connection, pairs: Iterable[Pair], buckets: Sequence[float], now: float, part: int = 0
) -> None:
    """Add the pairs' deltas to the running totals and to the rows of `now`'s minute
    and hour, in the rows of partition `part` (0 for the single engine)."""
    labels = [bucket_label(b) for b in (*buckets, math.inf)]
    tally_rows, bucket_rows, bin_rows = [], [], []
    for stream, group, counts, latency_sum, hist, bins in pairs:
        row: dict[str, Any] = {"stream": stream, "grp": group, "part": part}
        row.update({name: int(counts.get(name, 0)) for name in TALLY_FIELDS})
        row["latency_sum"] = latency_sum
        tally_rows.append(row)
        bucket_rows += [
            {"stream": stream, "grp": group, "part": part, "le": labels[i], "count": n}
            for i, n in enumerate(hist)
            if n
        ]
        bin_rows += [
            {"stream": stream, "grp": group, "part": part, "bin": b, "count": n}
            for b, n in bins.items()
            if n
        ]
    _add(conn, tallies, ("stream", "grp", "part"), tally_rows)
    _add(conn, latency_buckets, ("stream", "grp", "le", "part"), bucket_rows)
    _add(conn, latency_sketch, ("stream", "grp", "bin", "part"), bin_rows)
    for counts_table, buckets_table, step in TIMELINES:
        at = int(now // step) * step
        _add(
            conn, counts_table, ("stream", "grp", "at", "part"),
            [{**r, "at": at} for r in tally_rows],
        )  # fmt: skip
        _add(
            conn, buckets_table, ("stream", "grp", "at", "le", "part"),
            [{**r, "at": at} for r in bucket_rows],
        )  # fmt: skip


_COLUMNS = ", ".join(VERDICT_COLUMNS)
_UPSERT = (
    "ON CONFLICT (stream, message_id, grp) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in VERDICT_COLUMNS[3:])
)


def write_verdicts(conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Upsert verdict rows, as the engine gives them (VERDICT_COLUMNS order).

    Straight to the driver: a backlog can judge hundreds of thousands of
    discrepant ids in one tick, and building statements row by row would cost
    more than the engine did.
    """
    if not rows:
        return
    # A row may appear twice in one tick (changed twice): the last one wins.
    latest = list({(r[0], r[1], r[2]): tuple(r) for r in rows}.values())
    if conn.dialect.name != "postgresql":
        marks = ", ".join("?" * len(VERDICT_COLUMNS))
        conn.exec_driver_sql(
            f"INSERT INTO verdicts ({_COLUMNS}) VALUES ({marks}) {_UPSERT}", latest
        )
        return
    dbapi: Any = conn.connection.dbapi_connection
    with dbapi.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _verdicts (LIKE verdicts) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY _verdicts ({_COLUMNS}) FROM STDIN") as copy:
            for row in latest:
                copy.write_row(row)
        cur.execute(f"INSERT INTO verdicts ({_COLUMNS}) SELECT {_COLUMNS} FROM _verdicts {_UPSERT}")


# A count no store column can exceed: a sender's seqs reach 2**63 - 1.
_COUNT_MAX = 2**63 - 1


def write_missing(
    conn: Connection, missing: Mapping[tuple[str, str, str], int], part: int = 0
) -> None:
    """Add records declared missing, per (stream, kind, group); totals stop at
    the column's bound rather than fail the tick (seqs are the sender's)."""
    if not missing:
        return
    t = records_missing
    stmt = upsert(conn, t)
    stmt = stmt.on_conflict_do_update(
        index_elements=["stream", "kind", "grp", "part"],
        set_={
            "total": case(
                (t.c.total > _COUNT_MAX - stmt.excluded.total, _COUNT_MAX),
                else_=t.c.total + stmt.excluded.total,
            )
        },
    )
    conn.execute(
        stmt,
        [
            {"stream": s, "kind": k, "grp": g, "part": part, "total": min(n, _COUNT_MAX)}
            for (s, k, g), n in missing.items()
        ],
    )


def write_errors(
    conn: Connection, errors: Mapping[tuple[str, str, str, str], int], part: int = 0
) -> None:
    """Add failed records per (stream, kind, group, error class) to partition `part`'s
    running totals."""
    _add(
        conn, delivery_errors, ("stream", "kind", "grp", "error", "part"),
        [{"stream": s, "kind": k, "grp": g, "error": e, "part": part, "total": n}
         for (s, k, g, e), n in errors.items()],
    )  # fmt: skip


# (stream, group) -> (ids in flight, first produce of the oldest of them)
InFlight = Mapping[tuple[str, str], tuple[int, float]]


def write_in_flight(conn: Connection, flight: InFlight, part: int = 0) -> None:
    """Replace partition `part`'s snapshot of the ids in flight."""
    conn.execute(delete(in_flight).where(in_flight.c.part == part))
    if flight:
        conn.execute(
            in_flight.insert(),
            [{"stream": s, "grp": g, "part": part, "n": n, "oldest": t0}
             for (s, g), (n, t0) in flight.items()],
        )  # fmt: skip


def write_meta(conn: Connection, facts: Mapping[str, object]) -> None:
    stmt = upsert(conn, meta)
    stmt = stmt.on_conflict_do_update(index_elements=["key"], set_={"value": stmt.excluded.value})
    conn.execute(stmt, [{"key": k, "value": str(v)} for k, v in facts.items()])


def load_verdicts(conn: Connection, keys: Sequence[tuple[str, str]]) -> list[tuple[Any, ...]]:
    """The stored verdict rows of these (stream, message id) keys, for Engine.install."""
    out: list[tuple[Any, ...]] = []
    v = verdicts
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        query = select(*(v.c[c] for c in VERDICT_COLUMNS)).where(
            tuple_(v.c.stream, v.c.message_id).in_(chunk)
        )
        out += [tuple(row) for row in conn.execute(query)]
    return out
