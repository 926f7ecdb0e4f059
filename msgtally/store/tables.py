"""The store's tables (SQLAlchemy Core), shared by ingest, reconcile and slis.

Two kinds of tables. The log is what ingest acknowledged: append-only, one
row per accepted request, never rewritten. Everything else is what the
engine made of the log, written in one transaction per engine tick, so the
figures a reader sees always belong to one position in the log.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

from msgtally.names import TALLY_FIELDS

metadata = MetaData()

# Float(53) is a double on both dialects; PostgreSQL's plain FLOAT would do too,
# the variant only makes the DDL explicit.
Double = Float(53).with_variant(DOUBLE_PRECISION(), "postgresql")
# SQLite autoincrement needs INTEGER PRIMARY KEY (the rowid alias).
LogId = BigInteger().with_variant(Integer(), "sqlite")

# Every accepted request body, re-encoded (msgtally.ingest.intake.logbody). A 2xx
# answer means its row is committed. Ids are never reused.
log = Table(
    "log",
    metadata,
    Column("id", LogId, primary_key=True, autoincrement=True),
    Column("received_at", Double, nullable=False),
    Column("n", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

# Log rows the engine has not applied yet. Written with the log row, deleted by
# the tick that applies it: a row that commits late (several collectors on
# PostgreSQL) is never skipped.
log_pending = Table(
    "log_pending",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("received_at", Double, nullable=False),
    Column("n", Integer, nullable=False),
)

# Every tick that changed the engine's state: which log rows it applied, and
# its clocks. Recovery replays the ticks after the checkpoint; a rebuild (the
# checkpoint would not load) replays them all, with engine_events.
ticks = Table(
    "ticks",
    metadata,
    Column("tick", BigInteger, primary_key=True, autoincrement=False),
    Column("log_ids", Text, nullable=False),
    Column("now", Double, nullable=False),
    Column("watermark", Double, nullable=False),
)

# The verdict rows a tick loaded back from `verdicts` for ids it had forgotten,
# as they were then (JSON, a list of rows in the order of
# reconcile/outputs.py VERDICT_COLUMNS): a replay of the tick installs these,
# not the rows the tick itself and later ones have written over them since.
# Only ticks that loaded any; pruned with their tick.
tick_loads = Table(
    "tick_loads",
    metadata,
    Column("tick", BigInteger, primary_key=True, autoincrement=False),
    Column("rows", Text, nullable=False),
)

# The same for the Kafka log's partitions (msgtally worker): the verdict rows
# the message at `offset` of partition `part` loaded back, committed with it.
# A worker that takes the partition over and replays the message installs
# these. Dropped once a checkpoint of the partition passes the offset (no
# replay starts before it).
partition_loads = Table(
    "partition_loads",
    metadata,
    Column("part", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("rows", Text, nullable=False),
    PrimaryKeyConstraint("part", "offset"),
)

# What else changed the engine's state, numbered with the ticks: the
# configuration an engine started with ("configure") and groups back-filled
# ("expect"), detail as JSON. With the ticks, the history a rebuild replays.
engine_events = Table(
    "engine_events",
    metadata,
    Column("tick", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)

# Checkpoints that did not load, set aside with the reason: the state was
# rebuilt from the log instead.
checkpoint_rejected = Table(
    "checkpoint_rejected",
    metadata,
    Column("id", LogId, primary_key=True, autoincrement=True),
    Column("tick", BigInteger, nullable=False),
    Column("taken_at", Double, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("rejected_at", Double, nullable=False),
    sqlite_autoincrement=True,
)

# Log rows whose body the engine rejects, out of log_pending with the reason
# (msgtally quarantine list / retry); the log row itself stays.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("received_at", Double, nullable=False),
    Column("n", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("quarantined_at", Double, nullable=False),
)

# The engine's whole state at one tick (msgtally.reconcile._machine dumps()).
checkpoint = Table(
    "checkpoint",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("tick", BigInteger, nullable=False),
    Column("taken_at", Double, nullable=False),
    Column("body", LargeBinary, nullable=False),
)


# `part` in the engine's output tables: 0 for the single engine. On the Kafka
# log (msgtally.reconcile.partitioned), a partition of the log: the in-flight
# snapshot, records missing and error counts are each partition's own rows; a
# worker's commit adds the counter deltas of all its partitions (tallies,
# buckets, sketch bins, their minute and hour rows) to the rows of the lowest
# partition it moved, whose row it holds locked, so no two commits write the
# same rows at once. Every read sums over `part`.
PARTITIONED = ("tallies", "latency_buckets", "latency_sketch", "tally_minutes",
               "latency_minutes", "tally_hours", "latency_hours", "in_flight",
               "records_missing", "delivery_errors")  # fmt: skip

# The running totals per (stream, group): what /metrics and the SLIs read.
tallies = Table(
    "tallies",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    *(Column(name, BigInteger, nullable=False, default=0) for name in TALLY_FIELDS),
    Column("latency_sum", Double, nullable=False, default=0.0),
    Column("part", Integer, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("stream", "grp", "part"),
)

# Latency histogram per (stream, group), one row per bucket (not cumulative).
latency_buckets = Table(
    "latency_buckets",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("le", String(32), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("part", Integer, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("stream", "grp", "le", "part"),
)


def _timeline(name: str) -> tuple[Table, Table]:
    """The tally deltas and latency bucket deltas of every tick, added up per (stream,
    group) and step (a minute or an hour): `at` is the step's start, unix seconds, of
    the tick's `now`. Windowed figures are sums of these rows (msgtally.slis.read.windows);
    msgtally.reconcile.history prunes them (--retain)."""
    counts = Table(
        f"tally_{name}",
        metadata,
        Column("stream", String(256), nullable=False),
        Column("grp", String(256), nullable=False),
        Column("at", BigInteger, nullable=False),
        *(Column(n, BigInteger, nullable=False, default=0) for n in TALLY_FIELDS),
        Column("latency_sum", Double, nullable=False, default=0.0),
        Column("part", Integer, nullable=False, default=0, server_default="0"),
        PrimaryKeyConstraint("stream", "grp", "at", "part"),
        Index(f"tally_{name}_at", "at"),
    )
    buckets = Table(
        f"latency_{name}",
        metadata,
        Column("stream", String(256), nullable=False),
        Column("grp", String(256), nullable=False),
        Column("at", BigInteger, nullable=False),
        Column("le", String(32), nullable=False),
        Column("count", BigInteger, nullable=False),
        Column("part", Integer, nullable=False, default=0, server_default="0"),
        PrimaryKeyConstraint("stream", "grp", "at", "le", "part"),
        Index(f"latency_{name}_at", "at"),
    )
    return counts, buckets


# Per minute, kept --retain (7 days); per hour, kept the longest SLO period + 30 days.
tally_minutes, latency_minutes = _timeline("minutes")
tally_hours, latency_hours = _timeline("hours")
MINUTE, HOUR = 60, 3600
# (counts, buckets, step in seconds): the two resolutions, finest first.
TIMELINES = ((tally_minutes, latency_minutes, MINUTE), (tally_hours, latency_hours, HOUR))

# The latency sketch per (stream, group): count per bin (msgtally.slis.read.sketch).
latency_sketch = Table(
    "latency_sketch",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("bin", Integer, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("part", Integer, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("stream", "grp", "bin", "part"),
)

# The verdict of every (stream, id, group) of an id that counts for a
# discrepancy (lost, late, duplicated, unexpected, dead-lettered, recovered,
# or indeterminate and unconsumed): the reconciliation report, and the state
# the engine reloads when records for such an id arrive after it forgot it.
verdicts = Table(
    "verdicts",
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
    Column("n", BigInteger, nullable=False),
    Column("ok", BigInteger, nullable=False),
    Column("max_attempt", BigInteger, nullable=False),
    Column("dl", SmallInteger, nullable=False),
    Column("latency", Double),
    PrimaryKeyConstraint("stream", "message_id", "grp"),
)

# Acknowledged ids not yet delivered nor judged, per (stream, group), as of the
# last tick, and the first produce of the oldest of them: the consumer-lag view.
# A snapshot rewritten by every tick (a store from before `oldest` gets it remade).
in_flight = Table(
    "in_flight",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("oldest", Double, nullable=True),
    Column("part", Integer, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("stream", "grp", "part"),
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

# Records missing from the senders' numbering, per (stream, kind, group) ("" for
# produces), every producer added up: measurement loss found by the engine
# (running totals, written with the tick that declared them).
records_missing = Table(
    "records_missing",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("part", Integer, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("stream", "kind", "grp", "part"),
)

# Every (stream, group) a record named ("" for produces): a bound on the series.
names = Table(
    "names",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    PrimaryKeyConstraint("stream", "grp"),
)

# Small key/value facts: the last tick, engine counters, the demo's mark.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

# The retry configuration each consumer instance (`source`, the shim's instance id)
# last announced per (stream, group), and when (`seen_at`, the collector's clock):
# the audit reads those seen within RETRY_CONFIG_TTL, and the intake deletes older
# ones when it writes new ones. max_attempts NULL: no limit; dead_letter NULL: none.
retry_configs = Table(
    "retry_configs",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("source", String(256), nullable=False),
    Column("acks", String(8), nullable=False),
    Column("max_attempts", BigInteger, nullable=True),
    Column("backoff_base", Double, nullable=False),
    Column("backoff_cap", Double, nullable=False),
    Column("jitter", SmallInteger, nullable=False),
    Column("dead_letter", String(256), nullable=True),
    Column("seen_at", Double, nullable=False),
    PrimaryKeyConstraint("stream", "grp", "source"),
    Index("retry_configs_seen_at", "seen_at"),
)
# An instance that has not announced for this long (seconds) is gone: shims announce
# every minute with their records (msgtally.ingest.shim.announce.RESEND_EVERY), so
# this is fifteen missed announcements, or a consumer idle for 15 minutes.
RETRY_CONFIG_TTL = 900.0


# Failed records by error class, per (stream, kind, group) ("" for produces):
# running totals, counted by the engine once per record (a resend never
# counts), written with the tick that applied them.
delivery_errors = Table(
    "delivery_errors",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("error", String(16), nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("part", Integer, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("stream", "kind", "grp", "error", "part"),
)


# --- retention (msgtally.reconcile.retention) ---

# Groups back-filled when the log no longer held all it once did (pruned past
# --retain): their figures count the ids the log held from `since` (the receipt
# time of the oldest row held then) on; earlier ids owe them nothing.
backfills = Table(
    "backfills",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    Column("since", Double, nullable=False),
    Column("at", Double, nullable=False),
    PrimaryKeyConstraint("stream", "grp"),
)

# Verdict rows are pruned --retain-verdicts past their deadline, oldest first.
verdicts_deadline = Index("verdicts_deadline", verdicts.c.deadline)

# The Kafka log's partitions (msgtally worker), one row each: the offset of the
# next message to apply (offsets live here, committed with the figures they
# produced), the partition's clock (its latest receipt time), and the fencing
# epoch, bumped by each worker that takes the partition: a commit names the
# epoch it holds and changes nothing once another worker took it over. Each
# commit also records the engine's own bookkeeping of the partition, as the
# single engine's meta rows hold it (msgtally.store.engine_facts): when it
# committed (NULL: never), the records its machine applied and repeated up to
# `next_offset`, the topic's end offset as the worker last saw it, and the
# oldest message the topic holds of the partition: its offset (-1: not known
# yet) and its receipt time (the log's held-since, msgtally.store.held).
partitions = Table(
    "partitions",
    metadata,
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("clock", Double, nullable=False),
    Column("owner", String(256), nullable=False),
    Column("committed_at", Double, nullable=True),
    Column("records", BigInteger, nullable=False, server_default="0"),
    Column("repeats", BigInteger, nullable=False, server_default="0"),
    Column("log_end", BigInteger, nullable=False, server_default="0"),
    Column("held_from", BigInteger, nullable=False, server_default="-1"),
    Column("held_since", Double, nullable=True),
)

# Each partition's machine state at one offset: a worker that takes the
# partition loads it and replays the topic from `next_offset` on.
partition_checkpoints = Table(
    "partition_checkpoints",
    metadata,
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("clock", Double, nullable=False),
    Column("taken_at", Double, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

# Consumer groups seen on some partition, announced to every worker: each
# partition's machine expects them and back-fills its own ids from the topic.
announced_groups = Table(
    "announced_groups",
    metadata,
    Column("stream", String(256), nullable=False),
    Column("grp", String(256), nullable=False),
    PrimaryKeyConstraint("stream", "grp"),
)
