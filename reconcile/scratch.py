"""Per-pass scratch tables: temporary, keyed like the tables they summarise."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
)

from msgtally.ingest.tables import Double

scratch = MetaData()


def _temp(name: str, *cols: Column[object] | PrimaryKeyConstraint) -> Table:
    return Table(name, scratch, *cols, prefixes=["TEMPORARY"], sqlite_with_rowid=False)


def _key(*names: str) -> list[Column[object]]:
    return [Column(n, String(256), nullable=False) for n in names]


# The inbox rows this pass takes.
t_batch = _temp("t_batch", Column("id", BigInteger, primary_key=True))
# Configured per-stream deadlines (others use the default).
t_deadline = _temp(
    "t_deadline", Column("stream", String(256), primary_key=True), Column("deadline", Double)
)
# The slice's new records per (id, group): first ts, consume errors.
t_seen = _temp(
    "t_seen",
    *_key("stream", "message_id", "grp"),
    Column("first_ts", Double, nullable=False),
    Column("errors", Integer, nullable=False),
    PrimaryKeyConstraint("stream", "message_id", "grp"),
)
# The (stream, message id) keys this pass looks at: new records, due pending
# ids, and the history of a stream that gained a group.
t_cand = _temp(
    "t_cand", *_key("stream", "message_id"), PrimaryKeyConstraint("stream", "message_id")
)
# The candidates' records, aggregated once per (id, group); group "" holds the
# produce side.
t_rec = _temp(
    "t_rec",
    *_key("stream", "message_id", "grp"),
    Column("n", Integer, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("first_ts", Double, nullable=False),
    Column("first_ok", Double),
    Column("dl", SmallInteger, nullable=False),
    Column("max_attempt", Integer, nullable=False),
    PrimaryKeyConstraint("stream", "message_id", "grp"),
)
# Produce side per id.
t_p = _temp(
    "t_p",
    *_key("stream", "message_id"),
    Column("acked", SmallInteger, nullable=False),
    Column("t0", Double, nullable=False),
    Column("max_attempt", Integer, nullable=False),
    PrimaryKeyConstraint("stream", "message_id"),
)
# Consume side per id and group, plus the produce side: one row per id and
# group that must (eventually) be classified.
t_agg = _temp(
    "t_agg",
    *_key("stream", "message_id", "grp"),
    Column("p_any", SmallInteger, nullable=False),
    Column("acked", SmallInteger, nullable=False),
    Column("t0", Double),
    Column("base", Double, nullable=False),
    Column("n", Integer, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("ok_in_time", Integer, nullable=False),
    Column("first_ok", Double),
    Column("dl", SmallInteger, nullable=False),
    Column("max_attempt", Integer, nullable=False),
    Column("has_group", SmallInteger, nullable=False),
    PrimaryKeyConstraint("stream", "message_id", "grp"),
)
# New state of every row that is classified now or was before, beside its
# old state (NULL when the row is new): the tallies move by the difference.
_STATE = (
    ("cls", String(12), False),
    ("acked", SmallInteger, False),
    ("p_any", SmallInteger, False),
    ("late", SmallInteger, False),
    ("t0", Double, True),
    ("deadline", Double, False),
    ("n", Integer, False),
    ("ok", Integer, False),
    ("max_attempt", Integer, False),
    ("dl", SmallInteger, False),
    ("latency", Double, True),
)
t_new = _temp(
    "t_new",
    *_key("stream", "message_id", "grp"),
    *(Column(name, type_, nullable=nullable) for name, type_, nullable in _STATE),
    *(Column("o_" + name, type_) for name, type_, _ in _STATE if name not in ("t0", "deadline")),
    PrimaryKeyConstraint("stream", "message_id", "grp"),
)
STATE_COLUMNS = tuple(name for name, _, _ in _STATE)
ALL = (t_batch, t_deadline, t_seen, t_cand, t_rec, t_p, t_agg, t_new)


def create_all(conn: Connection) -> None:
    for table in ALL:
        table.drop(conn, checkfirst=True)
        table.create(conn)


def drop_all(conn: Connection) -> None:
    for table in reversed(ALL):
        table.drop(conn)
