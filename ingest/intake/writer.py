"""The store's write path: a validated batch in, one atomic commit.

A batch becomes one log row (msgtally.ingest.intake.logbody: its records and sequence
marks) and one pending row for the engine, in one transaction with the shim's
drop totals and retry configurations: a 2xx answer means all of it is committed,
a failure means none of it is. Recognising a record sent twice is the engine's job (it knows the
ids in flight): ingest only appends, whatever the traffic.

With the log on Kafka (`log_to`), the records and marks go to the topic
instead (msgtally.ingest.intake.kafka_log), acknowledged before the
transaction of the names and drop totals commits: a 2xx still means all of
it is kept, and a failure (LogUnavailable) that the sender must resend.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, case, delete, insert

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.cardinality import NameGuard
from msgtally.ingest.intake.schema import Batch, DropReport, Record, RetryConfigReport
from msgtally.store.db import upsert, write_tx
from msgtally.store.tables import RETRY_CONFIG_TTL, log, log_pending, retry_configs, shim_drops


class LogSink(Protocol):
    """Where a store's log goes when it is not the `log` table."""

    def append(self, records: list[Record], marks: Any, received_at: float) -> None: ...

    def ends(self) -> Sequence[int]:
        """Per partition, the end offset of the log as this sink had it acknowledged."""
        ...


_sinks: weakref.WeakKeyDictionary[Engine, LogSink] = weakref.WeakKeyDictionary()


def log_to(store: Engine, sink: LogSink | None) -> None:
    """Every batch written to `store` from now on logs its records to `sink`
    (the Kafka log), or to the `log` table again with None: one switch that
    every way in (records, OTLP over HTTP and gRPC) follows."""
    if sink is None:
        _sinks.pop(store, None)
    else:
        _sinks[store] = sink


def log_ends(store: Engine) -> Sequence[int] | None:
    """The end offset of each partition of `store`'s Kafka log as this process's
    producer had it acknowledged; None when its log is the `log` table."""
    sink = _sinks.get(store)
    return None if sink is None else sink.ends()


def write_batch(
    store: Engine,
    batch: Batch,
    received_at: float | None = None,
    guard: NameGuard | None = None,
) -> int:
    """Store a batch atomically; returns how many records it logged.

    `received_at` is when the collector took it (now by default): the engine
    waits `settle` past the first receipt of an id before judging it. With a
    `guard`, a batch that would name more series than it allows is refused
    (RecordError), nothing of it stored.
    """
    if not batch.records and not batch.drops and not batch.sequences and not batch.retry_configs:
        return 0
    at = time.time() if received_at is None else received_at
    admitted: set[tuple[str, str]] = set()
    sink = _sinks.get(store)
    with write_tx(store) as conn:
        if guard is not None:
            batch, admitted = guard.admit(conn, batch)
        if sink is not None:
            sink.append(batch.records, batch.sequences, at)
        elif batch.records or batch.sequences:
            # Marks alone are a log row too: the engine reads them in log order.
            body = logbody.encode(batch.records, batch.sequences)
            n = len(batch.records)
            row = conn.execute(
                insert(log).values(received_at=at, n=n, body=body).returning(log.c.id)
            ).one()
            conn.execute(insert(log_pending).values(id=row[0], received_at=at, n=n))
        if batch.drops:
            assert batch.source is not None  # the schema requires it with drops
            _store_drops(conn, batch.source, batch.drops)
        if batch.retry_configs:
            assert batch.source is not None  # the schema requires it with configurations
            _store_configs(conn, batch.source, batch.retry_configs, at)
    if guard is not None:
        guard.remember(admitted)
    return len(batch.records)


def _store_drops(conn: Connection, source: str, drops: list[DropReport]) -> None:
    stmt = upsert(conn, shim_drops)
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
            {"source": source, "stream": d.stream, "kind": d.kind, "grp": d.group, "total": d.total}
            for d in drops
        ],
    )


def _store_configs(
    conn: Connection, source: str, configs: Sequence[RetryConfigReport], at: float
) -> None:
    """What the instance announced replaces what it announced before; instances
    silent for RETRY_CONFIG_TTL go (only here: a rare write, once a minute a shim)."""
    conn.execute(delete(retry_configs).where(retry_configs.c.seen_at < at - RETRY_CONFIG_TTL))
    stmt = upsert(conn, retry_configs)
    columns = ("acks", "max_attempts", "backoff_base", "backoff_cap", "jitter", "dead_letter",
               "seen_at")  # fmt: skip
    stmt = stmt.on_conflict_do_update(
        index_elements=["stream", "grp", "source"],
        set_={name: stmt.excluded[name] for name in columns},
    )
    conn.execute(
        stmt,
        [
            {
                "stream": c.stream, "grp": c.group, "source": source, "acks": c.acks,
                "max_attempts": c.max_attempts, "backoff_base": c.backoff_base,
                "backoff_cap": c.backoff_cap, "jitter": int(c.jitter),
                "dead_letter": c.dead_letter, "seen_at": at,
            }
            for c in configs
        ],
    )  # fmt: skip
