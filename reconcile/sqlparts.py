"""Small SQL helpers the reconcile statements share, dialect by dialect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import ColumnElement

from . import scratch as S
from .config import ReconcileConfig


def upsert(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def add_on_conflict(
    conn: Connection, table: Any, key: Sequence[str], sel: Select[Any], names: Sequence[str]
) -> None:
    """INSERT ... SELECT that adds to existing counters: tallies and buckets."""
    stmt = upsert(conn, table).from_select(list(names), sel)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={n: table.c[n] + stmt.excluded[n] for n in names if n not in key},
    )
    conn.execute(stmt)


def deadline_of(stream_col: Any, config: ReconcileConfig) -> ColumnElement[Any]:
    if not config.stream_deadlines:  # the common case needs no lookup per row
        return literal(config.deadline)
    return func.coalesce(
        select(S.t_deadline.c.deadline)
        .where(S.t_deadline.c.stream == stream_col)
        .scalar_subquery(),
        literal(config.deadline),
    )


def analyze(conn: Connection, *tables: Any) -> None:
    # Temporary tables are never analysed by autovacuum; without statistics
    # PostgreSQL plans the joins below as if they were tiny.
    if conn.dialect.name == "postgresql":
        for t in tables:
            conn.exec_driver_sql(f"ANALYZE {t.name}")
