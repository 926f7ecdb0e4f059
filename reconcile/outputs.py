"""What a tick writes: the engine's drained changes, added to the store.

Tallies, histogram buckets, sketch bins, missing records and failed records
by error class move by the
deltas of the tick (tallies and buckets also in the rows of the minute and
the hour of the tick's `now`, which windowed figures add up); verdict rows
replace the previous state of their (stream, id, group); the in-flight gauge
is replaced whole. All of it in the tick's transaction.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

from . import _machine

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


Columns = dict[str, list[Any]]  # rows of one table as columns, by column name
# A tick of one machine: (its clock `now`, its drained pairs).
PairsAt = tuple[float, Iterable[Pair]]


def _add(conn: Connection, table: Any, key: Sequence[str], columns: Columns,
         timelines: Sequence[Any] = ()) -> None:  # fmt: skip
    """INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x, for counters: the
    rows into `table` and, when `timelines` are given (the per-minute and per-hour
    tables), into each of them at the row's `at<i>` column."""
    if not columns[key[0]]:
        return
    if conn.dialect.name == "postgresql":
        sql = _add_sql(conn.dialect, table, tuple(timelines), tuple(key), tuple(columns))
        conn.exec_driver_sql(sql, tuple(array_literal(v, table_type(table, timelines, n))
                                        for n, v in columns.items()))  # fmt: skip
        return
    names = list(columns)
    rows = [dict(zip(names, r, strict=True)) for r in zip(*columns.values(), strict=True)]
    values = [n for n in names if n not in key and n not in _AT]
    for i, to in enumerate((table, *timelines)):
        stmt = upsert(conn, to)
        stmt = stmt.on_conflict_do_update(
            index_elements=[*key, *(["at"] if i else [])],
            set_={n: to.c[n] + stmt.excluded[n] for n in values},
        )
        at = f"at{i - 1}"
        conn.execute(stmt, [{**{n: r[n] for n in (*key, *values)},
                             **({"at": r[at]} if i else {})} for r in rows])  # fmt: skip


def table_type(table: Any, timelines: Sequence[Any], name: str) -> Any:
    """The SQL type of column `name` of `_add`'s columns (`at<i>`: the timelines' `at`)."""
    return timelines[0].c.at.type if name in _AT else table.c[name].type


@functools.lru_cache(maxsize=64)
def _add_sql(
    dialect: Any, table: Any, timelines: tuple[Any, ...], key: tuple[str, ...],
    names: tuple[str, ...],
) -> str:  # fmt: skip
    """`_add` on PostgreSQL: one statement whatever the rows and tables. Each column
    goes as one array literal, unnested once server-side; each table takes its
    rows of one key summed first (a statement may not update a row twice). A
    tick of a busy partition adds hundreds of sketch and bucket rows, and one
    parameter set per row cost more than the state machine did, one statement
    per table as much again (bench/distributed.py)."""
    q = dialect.identifier_preparer.quote
    values = [q(n) for n in names if n not in key and n not in _AT]
    arrays = ", ".join(
        f"%s::{table_type(table, timelines, n).compile(dialect=dialect)}[]" for n in names
    )
    inserts = []
    for i, to in enumerate((table, *timelines)):
        keys = [q(n) for n in key] + ([q("at")] if i else [])
        picked = [q(n) for n in key] + ([q(f"at{i - 1}")] if i else [])
        name = q(to.name)
        inserts.append(
            f"INSERT INTO {name} ({', '.join(keys)}, {', '.join(values)}) "
            f"SELECT {', '.join(picked)}, {', '.join(f'sum({v})' for v in values)} FROM u "
            f"GROUP BY {', '.join(picked)} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
            + ", ".join(f"{v} = {name}.{v} + excluded.{v}" for v in values)
        )
    ctes = [f"u AS (SELECT * FROM unnest({arrays}) AS u({', '.join(q(n) for n in names)}))"]
    ctes += [f"w{i} AS ({sql})" for i, sql in enumerate(inserts[:-1])]
    return f"WITH {', '.join(ctes)} {inserts[-1]}"


def array_literal(values: Sequence[Any], type_: Any) -> str:
    """A PostgreSQL array literal of `values`, by the column's type: formatted here
    in one join, as psycopg's list adaptation costs per element what the rest
    of a row's write does. None is NULL; floats go as repr (exact: PostgreSQL
    reads the shortest repr back to the same double)."""
    python = type_.python_type
    if python is str:
        return "{" + ",".join(_quoted(v) for v in values) + "}"
    if python is float:
        return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"
    return "{" + ",".join(map(str, values)) + "}"


@functools.lru_cache(maxsize=4096)
def _quoted(value: str) -> str:
    """An array literal's element: double-quoted, its backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_AT = tuple(f"at{i}" for i in range(len(TIMELINES)))
_TALLY = ("stream", "grp", "part", *_AT, *TALLY_FIELDS, "latency_sum")
_BUCKET = ("stream", "grp", "part", *_AT, "le", "count")


def write_pairs(
    conn: Connection, pairs: Iterable[Pair], buckets: Sequence[float], now: float, part: int = 0
) -> None:
    """Add the pairs' deltas to the running totals and to the rows of `now`'s minute
    and hour, in the rows of partition `part` (0 for the single engine)."""
    add_pairs(conn, part, [(now, pairs)], buckets)


def add_pairs(
    conn: Connection, part: int, ticks: Sequence[PairsAt], buckets: Sequence[float],
    sketches: _machine.Sketches | None = None,
) -> None:  # fmt: skip
    """`write_pairs` for several ticks at once (of several partitions: a worker's
    commit), in the rows of partition `part`: the deltas of one key summed
    here, the rows built as columns, one statement per table family. Summed
    per (stream, group) first, then per bucket; the sketch bins in `sketches`
    (Machine.drain_copy's, summed there over drains and partitions: a busy
    worker's commit adds up hundreds of thousands of bins, and a Python step
    per bin was its cost), the pairs' own bins added to them."""
    labels = [bucket_label(b) for b in (*buckets, math.inf)]
    field = {name: i for i, name in enumerate(TALLY_FIELDS)}
    counts_of: dict[tuple[Any, ...], list[Any]] = {}  # (stream, grp, part, *ats): counts
    hists: dict[tuple[Any, ...], list[int]] = {}  # (stream, grp, part, *ats): per bucket
    summed = _machine.Sketches() if sketches is None else sketches
    for now, pairs in ticks:
        ats = [int(now // step) * step for _counts, _buckets, step in TIMELINES]
        for stream, group, counts, latency_sum, hist, bins in pairs:
            key = (stream, group, part, *ats)
            row = counts_of.get(key)
            if row is None:
                row = counts_of[key] = [0] * len(TALLY_FIELDS) + [0.0]
                hists[key] = [0] * len(hist)
            for name, n in counts.items():
                row[field[name]] += n
            row[-1] += latency_sum
            hists[key] = list(map(operator.add, hists[key], hist))
            if bins:
                summed.add(stream, group, bins)
    timelines = [(c, bt) for c, bt, _step in TIMELINES]
    _add(conn, tallies, ("stream", "grp", "part"),
         _columns(_TALLY, [(*k, *v) for k, v in counts_of.items()]), [c for c, _ in timelines])
    _add(conn, latency_buckets, ("stream", "grp", "le", "part"),
         _columns(_BUCKET, [(*k, labels[i], n) for k, h in hists.items()
                            for i, n in enumerate(h) if n]),
         [bt for _, bt in timelines])
    streams, groups, bins_, counts_ = summed.columns()
    _add(conn, latency_sketch, ("stream", "grp", "bin", "part"),
         {"stream": streams, "grp": groups, "part": [part] * len(bins_), "bin": bins_,
          "count": counts_})  # fmt: skip


def _columns(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> Columns:
    """Rows (in `names` order) as columns."""
    if not rows:
        return {n: [] for n in names}
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


_COLUMNS = ", ".join(VERDICT_COLUMNS)
_UPSERT = (
    "ON CONFLICT (stream, message_id, grp) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in VERDICT_COLUMNS[3:])
)


def write_verdicts(conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Upsert verdict rows, as the engine gives them (VERDICT_COLUMNS order); of
    rows of one (stream, id, group), the last one.

    Straight to the driver: a backlog can judge hundreds of thousands of
    discrepant ids in one tick, and building statements row by row would cost
    more than the engine did.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        # A row may appear twice in one tick (changed twice): the last one wins.
        latest = list({(r[0], r[1], r[2]): tuple(r) for r in rows}.values())
        marks = ", ".join("?" * len(VERDICT_COLUMNS))
        conn.exec_driver_sql(
            f"INSERT INTO verdicts ({_COLUMNS}) VALUES ({marks}) {_UPSERT}", latest
        )
        return
    with _copied(conn) as copy:
        for row in rows:
            copy.write_row(row)


def copy_verdicts(conn: Connection, texts: Sequence[bytes]) -> None:
    """`write_verdicts` on PostgreSQL for rows as the machine's `drain_copy` gives
    them, COPY text in order: no Python step per row (a worker's commit writes
    tens of thousands). Elsewhere (SQLite, in tests), read back as rows."""
    if conn.dialect.name != "postgresql":
        write_verdicts(conn, [r for text in texts for r in parse_copied(text)])
    elif any(texts):
        with _copied(conn) as copy:
            for text in texts:
                copy.write(text)


@contextlib.contextmanager
def _copied(conn: Connection) -> Iterator[Any]:
    """A COPY into a temporary table, its rows numbered as they come, then upserted
    into verdicts: of the rows of one (stream, id, group), the last."""
    dbapi: Any = conn.connection.dbapi_connection
    with dbapi.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _verdict_rows (LIKE verdicts, "
            "ord bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY _verdict_rows ({_COLUMNS}) FROM STDIN") as copy:
            yield copy
        cur.execute(
            f"INSERT INTO verdicts ({_COLUMNS}) SELECT DISTINCT ON (stream, message_id, grp) "
            f"{_COLUMNS} FROM _verdict_rows ORDER BY stream, message_id, grp, ord DESC {_UPSERT}"
        )


def parse_copied(
    text: bytes, keys: Iterable[tuple[str, str]] | None = None
) -> list[tuple[Any, ...]]:
    """The rows in `drain_copy`'s COPY text (of these (stream, message id) keys
    only, if given), as `drain` gives them (for Machine.install)."""
    wanted = None if keys is None else set(keys)
    out: list[tuple[Any, ...]] = []
    for line in text.decode("utf-8", "surrogatepass").split("\n")[:-1]:  # each ends a row
        f = [_unescape(v) for v in line.split("\t")]
        if wanted is not None and (f[0], f[1]) not in wanted:
            continue
        out.append(tuple(read(v) for read, v in zip(_READ, f, strict=True)))
    return out


def _float(value: str) -> float | None:
    return None if value == "\\N" else float.fromhex(value)  # drain_copy's "%a"


# How each of VERDICT_COLUMNS reads back from COPY text.
_READ: tuple[Callable[[str], Any], ...] = (
    str, str, str, str, int, int, int, _float, _float, int, int, int, int, _float
)  # fmt: skip


_ESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return re.sub(r"\\[\\tnr]", lambda m: _ESCAPES[m.group(0)], value)


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
    key = ("stream", "kind", "grp", "error")
    columns: Columns = {n: [k[i] for k in errors] for i, n in enumerate(key)}
    columns["part"] = [part] * len(errors)
    columns["total"] = list(errors.values())
    _add(conn, delivery_errors, (*key, "part"), columns)


# (stream, group) -> (ids in flight, first produce of the oldest of them)
InFlight = Mapping[tuple[str, str], tuple[int, float]]


def write_in_flight(conn: Connection, flight: InFlight, part: int = 0) -> None:
    """Replace partition `part`'s snapshot of the ids in flight."""
    replace_in_flight(conn, {part: flight})


_FLIGHT = ("stream", "grp", "part", "n", "oldest")


def replace_in_flight(conn: Connection, flights: Mapping[int, InFlight]) -> None:
    """`write_in_flight` for several partitions at once: two statements."""
    rows = [(s, g, part, n, t0) for part, flight in flights.items()
            for (s, g), (n, t0) in flight.items()]  # fmt: skip
    if conn.dialect.name != "postgresql":
        conn.execute(delete(in_flight).where(in_flight.c.part.in_(list(flights))))
        if rows:
            conn.execute(in_flight.insert(), [dict(zip(_FLIGHT, r, strict=True)) for r in rows])
        return
    parts = array_literal(list(flights), in_flight.c.part.type)
    conn.exec_driver_sql(
        f"DELETE FROM in_flight WHERE part = ANY({casts(conn, in_flight, ('part',))})", (parts,)
    )
    if rows:
        conn.exec_driver_sql(
            f"INSERT INTO in_flight ({', '.join(_FLIGHT)}) "
            f"SELECT * FROM unnest({casts(conn, in_flight, _FLIGHT)})",
            tuple(array_literal(c, in_flight.c[n].type)
                  for c, n in zip(zip(*rows, strict=True), _FLIGHT, strict=True)),
        )  # fmt: skip


def casts(conn: Connection, table: Any, names: Sequence[str]) -> str:
    """`%s::type[], ...`: PostgreSQL array parameters for these columns of `table`,
    for statements over `unnest` (each column sent as one array_literal)."""
    return _casts(conn.dialect, table, tuple(names))


@functools.lru_cache(maxsize=64)
def _casts(dialect: Any, table: Any, names: tuple[str, ...]) -> str:
    # Cached: compiling a type costs what writing dozens of rows does.
    return ", ".join(f"%s::{table.c[n].type.compile(dialect=dialect)}[]" for n in names)


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


def dump_loaded(rows: Sequence[Sequence[Any]]) -> str:
    """Verdict rows loaded back (load_verdicts), as `tick_loads` and
    `partition_loads` keep them for a replay."""
    return json.dumps([list(r) for r in rows])


def parse_loaded(text: str) -> list[tuple[Any, ...]]:
    """The rows `dump_loaded` kept, for Engine.install."""
    return [tuple(r) for r in json.loads(text)]
