"""The store's write path: a validated batch in, one atomic commit.

Idempotent: a record already stored (same record_id, or without one the same
value in every field) is ignored and counted as a repeat. The batch is written
in one transaction with its inbox rows, so the reconciler sees all of it or
none of it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, case, insert
from sqlalchemy.dialects import postgresql, sqlite

from .db import write_tx
from .schema import DropReport, Record
from .tables import inbox, shim_drops

_COLUMNS = (
    "stream, message_id, rkey, kind, grp, ts, attempt, outcome, "
    "producer, seq, trace_id, span_id, record_id, batch"
)
_SQLITE_INSERT = (
    f"INSERT INTO records ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)
_PG_INSERT = f"INSERT INTO records ({_COLUMNS}) SELECT * FROM _ingest ON CONFLICT DO NOTHING"


class IngestResult(NamedTuple):
    accepted: int
    ignored: int


def record_key(r: Record) -> str:
    """What makes two records the same: the shim's record_id, else every field."""
    if r.record_id is not None:
        return "r" + r.record_id
    # repr of the tuple is unambiguous (strings quoted and escaped, None apart
    # from "None"), unlike joining the fields with a separator.
    canon = repr(
        (r.kind, r.group, r.ts, r.attempt, r.outcome, r.producer, r.seq, r.trace_id, r.span_id)
    )
    return "h" + hashlib.blake2b(canon.encode(), digest_size=16).hexdigest()


def _rows(records: Sequence[Record], batch_of: dict[str, int]) -> list[tuple[object, ...]]:
    return [
        (
            r.stream,
            r.message_id,
            record_key(r),
            r.kind,
            r.group,
            r.ts,
            r.attempt,
            r.outcome,
            r.producer,
            r.seq,
            r.trace_id,
            r.span_id,
            r.record_id,
            batch_of[r.stream],
        )
        for r in records
    ]


def _open_batches(conn: Connection, records: Sequence[Record], now: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.stream] = counts.get(r.stream, 0) + 1
    batch_of: dict[str, int] = {}
    for stream, n in counts.items():
        row = conn.execute(
            insert(inbox).values(stream=stream, n=n, received_at=now).returning(inbox.c.id)
        ).one()
        batch_of[stream] = int(row[0])
    return batch_of


def write_batch(
    engine: Engine, records: Sequence[Record], drops: Sequence[DropReport] = ()
) -> IngestResult:
    """Store a batch atomically; returns how many were new and how many repeats."""
    if not records and not drops:
        return IngestResult(0, 0)
    inserted = 0
    with write_tx(engine) as conn:
        if records:
            batch_of = _open_batches(conn, records, time.time())
            rows = _rows(records, batch_of)
            if conn.dialect.name == "postgresql":
                inserted = _copy_insert(conn, rows)
            else:
                inserted = conn.exec_driver_sql(_SQLITE_INSERT, rows).rowcount
        if drops:
            _store_drops(conn, drops)
    return IngestResult(inserted, len(records) - inserted)


def _store_drops(conn: Connection, drops: Sequence[DropReport]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(shim_drops)
    # Totals only grow; an old report arriving late must not lower them.
    stmt = stmt.on_conflict_do_update(
        index_elements=["source", "stream", "kind", "grp"],
        set_={
            "total": case(
                (stmt.excluded.total > shim_drops.c.total, stmt.excluded.total),
                else_=shim_drops.c.total,
            )
        },
    )
    conn.execute(
        stmt,
        [
            {
                "source": d.source,
                "stream": d.stream,
                "kind": d.kind,
                "grp": d.group,
                "total": d.total,
            }
            for d in drops
        ],
    )


def _copy_insert(conn: Connection, rows: list[tuple[object, ...]]) -> int:
    # COPY into a scratch table, then one INSERT ... SELECT: PostgreSQL's fastest
    # path that still honours ON CONFLICT and reports an exact rowcount.
    dbapi: Any = conn.connection.dbapi_connection
    with dbapi.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _ingest "
            "(LIKE records INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY _ingest ({_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(_PG_INSERT)
        return int(cur.rowcount)
