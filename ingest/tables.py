"""The store's tables (SQLAlchemy Core), shared by ingest, reconcile and slis.

Every table that grows with traffic is keyed by (stream, message_id, ...),
so the same schema can be distributed by message id (Citus) and the join
stays local to a shard. Flags are small integers, not booleans, so that the
same SUM/MAX expressions run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
)
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

metadata = MetaData()

# Float(53) is a double on both dialects; PostgreSQL's plain FLOAT would do too,
# the variant only makes the DDL explicit.
Double = Float(53).with_variant(DOUBLE_PRECISION(), "postgresql")
# SQLite autoincrement needs INTEGER PRIMARY KEY (the rowid alias).
BatchId = BigInteger().with_variant(Integer(), "sqlite")

# Every record ever accepted; (stream, message_id, rkey) makes ingest idempotent.
# rkey is "r" + record_id when the shim set one, else "h" + a digest of every field.
records = Table(
    "records",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("message_id", String(256), nullable=False),
    Column("rkey", String(260), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("ts", Double, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(12), nullable=False),
    Column("producer", String(256)),
    Column("seq", BigInteger),
    Column("trace_id", String(32)),
    Column("span_id", String(16)),
    Column("record_id", String(256)),
    Column("batch", BigInteger, nullable=False),
    PrimaryKeyConstraint("stream", "message_id", "rkey"),
    Index("records_batch", "batch"),
    sqlite_with_rowid=False,
)

# One row per (ingest request, stream): what the reconciler has not seen yet.
# Rows become visible with their records, in one commit, so a reconciler never
# misses a batch that commits out of order; it deletes them once processed.
inbox = Table(
    "inbox",
    metadata,
    Column("id", BatchId, primary_key=True, autoincrement=True),
    Column("stream", String(256), nullable=False),
    Column("n", Integer, nullable=False),
    Column("received_at", Double, nullable=False),
    # Ids are never reused: records keep their batch id forever, and a reused
    # id would hand old records to the reconciler again.
    sqlite_autoincrement=True,
)

# Ids seen but not classified yet: the ids in flight. `base` is the time the
# deadline counts from (first produce, or first consume for an unproduced id).
pending = Table(
    "pending",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("message_id", String(256), nullable=False),
    Column("base", Double, nullable=False),
    Column("acked", SmallInteger, nullable=False),
    PrimaryKeyConstraint("stream", "message_id"),
    Index("pending_due", "stream", "base"),
    sqlite_with_rowid=False,
)

# One row per classified (stream, message id, group): its class and what has
# been counted for it, so records that arrive later only add what is new.
outcomes = Table(
    "outcomes",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("message_id", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    # delivered | lost | recovered | unexpected | none (indeterminate, unconsumed)
    Column("cls", String(12), nullable=False),
    Column("acked", SmallInteger, nullable=False),
    Column("p_any", SmallInteger, nullable=False),
    Column("late", SmallInteger, nullable=False),
    Column("t0", Double),
    Column("deadline", Double, nullable=False),
    Column("n", Integer, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("max_attempt", Integer, nullable=False),
    Column("dl", SmallInteger, nullable=False),
    Column("latency", Double),
    Column("classified_at", Double, nullable=False),
    PrimaryKeyConstraint("stream", "message_id", "grp"),
    sqlite_with_rowid=False,
)

# The groups expected to receive each stream: seen consuming, or configured.
# `settled` is 0 until a pass has counted the stream's history for the group.
groups = Table(
    "groups",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("first_ts", Double),
    Column("settled", SmallInteger, nullable=False),
    PrimaryKeyConstraint("stream", "grp"),
)

TALLY_FIELDS = (
    "produced",
    "delivered",
    "lost",
    "late",
    "recovered",
    "unexpected",
    "duplicated",
    "retried",
    "attempts",
    "dead_lettered",
    "consume_errors",
    "latency_count",
)

# The running totals per (stream, group): what /metrics and the SLIs read.
tallies = Table(
    "tallies",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    *(Column(name, BigInteger, nullable=False, default=0) for name in TALLY_FIELDS),
    Column("latency_sum", Double, nullable=False, default=0.0),
    PrimaryKeyConstraint("stream", "grp"),
)

# Latency histogram per (stream, group), one row per bucket (not cumulative).
latency_buckets = Table(
    "latency_buckets",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("le", String(32), nullable=False),
    Column("count", BigInteger, nullable=False),
    PrimaryKeyConstraint("stream", "grp", "le"),
)

# What each shim instance (`source`) dropped before sending: running totals,
# so a resent report cannot count twice. Measurement loss, shown beside the SLIs.
shim_drops = Table(
    "shim_drops",
    metadata,
    Column("source", String(256), nullable=False),
    Column("stream", String(256), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("total", BigInteger, nullable=False),
    PrimaryKeyConstraint("source", "stream", "kind", "grp"),
)

# Small key/value facts: last reconcile pass, schema version.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)
