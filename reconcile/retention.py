"""A bounded disk: the log and the verdicts pruned past their retention.

The log (one row per accepted request) would grow forever. A log row goes
once the engine has applied it, every checkpoint kept is past it (a damaged
checkpoint falls back to an older one and replays the log after it), and it
was received more than --retain ago. The engine prunes whole ticks, oldest
first: a tick's log rows and the tick's record go together, and the ticks held
are always those after one position (`log_pruned_tick` in meta). A back-fill
after the oldest checkpoint pins the ticks it scanned (its event's
`held_after`), so replaying it scans the same rows.

Verdict rows (the per-id discrepancy table) go --retain-verdicts past their
id's deadline. Tallies, histograms, sketches, the per-hour rows are kept as
msgtally.reconcile.history says.

Every chunk is its own short transaction (CHUNK_ROWS rows at most), so ingest
and reads wait for none of it. The space is reused: SQLite hands freed pages
back with PRAGMA incremental_vacuum (the store is made with auto_vacuum =
INCREMENTAL, msgtally.store.db); PostgreSQL's autovacuum does it, with the
pruned tables' storage settings (msgtally.store.db PG_STORAGE).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, select, text, tuple_

from msgtally.store.db import upsert, write_script, write_tx
from msgtally.store.tables import (
    checkpoint,
    engine_events,
    log,
    meta,
    tick_loads,
    ticks,
    verdicts,
)

from .history import Retention, prune_rows

CHUNK_ROWS = 1000  # log rows (or verdict rows) per prune transaction
RECLAIM_PAGES = 2000  # SQLite pages given back per transaction (8 MB at 4 KiB)
# meta keys: how far the log is pruned. Through this tick, through this log id
# (the highest pruned), whose row was received at this time.
PRUNED_TICK, PRUNED_ID, PRUNED_RECEIVED = "log_pruned_tick", "log_pruned_id", "log_pruned_at"


@dataclass(frozen=True)
class Pruned:
    """What one pass deleted, and whether more is due (it stopped at its limit)."""

    log_rows: int = 0
    ticks: int = 0
    verdicts: int = 0
    more: bool = False

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.log_rows + other.log_rows, self.ticks + other.ticks,
            self.verdicts + other.verdicts, other.more,
        )  # fmt: skip


@dataclass(frozen=True)
class Position:
    """How far the log is pruned: through this tick, this log id, received then."""

    tick: int
    log_id: int
    received_at: float


def _facts(conn: Connection, *keys: str) -> dict[str, str]:
    rows = conn.execute(select(meta.c.key, meta.c.value).where(meta.c.key.in_(keys)))
    return {k: v for k, v in rows}


def pruned_tick(conn: Connection) -> int:
    """The tick through which the log is pruned (0: never pruned)."""
    return int(_facts(conn, PRUNED_TICK).get(PRUNED_TICK, 0))


def position(conn: Connection) -> Position | None:
    """How far the log is pruned; None if never."""
    facts = _facts(conn, PRUNED_TICK, PRUNED_ID, PRUNED_RECEIVED)
    if PRUNED_TICK not in facts:
        return None
    return Position(
        int(facts[PRUNED_TICK]), int(facts.get(PRUNED_ID, 0)),
        float(facts.get(PRUNED_RECEIVED, 0.0)),
    )  # fmt: skip


def prune_bound(conn: Connection) -> int:
    """The last tick whose log rows may go: the oldest checkpoint's, or earlier
    when a back-fill after it scanned ticks from further back (0: none may go)."""
    oldest = conn.execute(select(func.min(checkpoint.c.tick))).scalar()
    if oldest is None:
        return 0
    bound = int(oldest)
    later = select(engine_events.c.detail).where(
        engine_events.c.kind == "expect", engine_events.c.tick > bound
    )
    for (detail,) in conn.execute(later):
        bound = min(bound, int(json.loads(detail).get("held_after", 0)))
    return bound


def _ids(log_ids: str) -> list[int]:
    return [int(i) for i in log_ids.split(",") if i]


def _received(conn: Connection, ids: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for i in range(0, len(ids), 500):
        query = select(log.c.id, log.c.received_at).where(log.c.id.in_(ids[i : i + 500]))
        out.update({int(r.id): float(r.received_at) for r in conn.execute(query)})
    return out


def prune_log_chunk(store: Engine, cutoff: float) -> tuple[int, int, bool]:
    """Deletes the oldest ticks held, up to CHUNK_ROWS log rows, whose rows all were
    received before `cutoff` and that the prune bound is past, with their log rows,
    in one transaction. (log rows, ticks deleted, whether the next chunk may find more)."""
    with write_tx(store) as conn:
        return _log_chunk(conn, cutoff)


def _log_chunk(conn: Connection, cutoff: float) -> tuple[int, int, bool]:
    bound = prune_bound(conn)
    candidates = conn.execute(
        select(ticks.c.tick, ticks.c.log_ids, ticks.c.now)
        .where(ticks.c.tick <= bound).order_by(ticks.c.tick).limit(256)
    ).all()  # fmt: skip
    wanted = [i for r in candidates for i in _ids(r.log_ids)][: CHUNK_ROWS * 2]
    received = _received(conn, wanted)
    chosen: list[int] = []
    last_tick, newest, more = 0, 0.0, False
    for r in candidates:
        ids = _ids(r.log_ids)
        unread = any(i not in received for i in ids)
        if chosen and (len(chosen) + len(ids) > CHUNK_ROWS or unread):
            more = True  # the chunk is full: the next one goes on
            break
        if unread:  # a tick larger than a chunk goes whole
            received.update(_received(conn, ids))
        times = [received[i] for i in ids if i in received]
        at = max(times) if times else float(r.now)
        if at >= cutoff:  # inside the window: this tick and every later one stay
            break
        chosen += ids
        last_tick, newest = int(r.tick), max(newest, at)
    else:
        more = len(candidates) == 256
    if not last_tick:
        return 0, 0, False
    for i in range(0, len(chosen), 500):
        conn.execute(delete(log).where(log.c.id.in_(chosen[i : i + 500])))
    gone = conn.execute(delete(ticks).where(ticks.c.tick <= last_tick)).rowcount
    conn.execute(delete(tick_loads).where(tick_loads.c.tick <= last_tick))
    conn.execute(delete(engine_events).where(engine_events.c.tick <= last_tick))
    before = _facts(conn, PRUNED_ID, PRUNED_RECEIVED)
    facts = {
        PRUNED_TICK: str(last_tick),
        PRUNED_ID: str(max([int(before.get(PRUNED_ID, 0)), *chosen])),
        PRUNED_RECEIVED: repr(max(float(before.get(PRUNED_RECEIVED, 0.0)), newest)),
    }
    stmt = upsert(conn, meta)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"], set_={"value": stmt.excluded.value}
    )
    conn.execute(stmt, [{"key": k, "value": v} for k, v in facts.items()])
    return len(chosen), int(gone), more


def prune_verdicts_chunk(store: Engine, cutoff: float) -> tuple[int, bool]:
    """Deletes up to CHUNK_ROWS verdict rows whose deadline is before `cutoff`, in
    one transaction. (rows deleted, whether there may be more)."""
    with write_tx(store) as conn:
        return _verdicts_chunk(conn, cutoff)


def _verdicts_chunk(conn: Connection, cutoff: float) -> tuple[int, bool]:
    v = verdicts
    keys = [
        tuple(r)
        for r in conn.execute(
            select(v.c.stream, v.c.message_id, v.c.grp)
            .where(v.c.deadline < cutoff).limit(CHUNK_ROWS)
        )
    ]  # fmt: skip
    for i in range(0, len(keys), 300):
        conn.execute(
            delete(v).where(tuple_(v.c.stream, v.c.message_id, v.c.grp).in_(keys[i : i + 300]))
        )
    return len(keys), len(keys) == CHUNK_ROWS


def prune(
    store: Engine,
    now: float,
    retention: Retention,
    *,
    max_chunks: int | None = None,
    on_chunk: Callable[[Pruned], None] | None = None,
) -> Pruned:
    """Prunes the log (--retain) and the verdicts (--retain-verdicts) as of `now`,
    a chunk per transaction, at most `max_chunks` of each (None: until done).
    The caller holds the engine's lease (msgtally.reconcile.lease)."""
    return _prune(
        lambda cutoff: prune_log_chunk(store, cutoff),
        lambda cutoff: prune_verdicts_chunk(store, cutoff),
        now, retention, max_chunks, on_chunk,
    )  # fmt: skip


class _Undone(Exception):
    """Rolls a dry run's transaction back, carrying what it would have deleted."""

    def __init__(self, pruned: Pruned, rows: int) -> None:
        self.pruned, self.rows = pruned, rows


def due(store: Engine, now: float, retention: Retention) -> tuple[Pruned, int]:
    """What `prune` and msgtally.reconcile.history's `prune` would delete as of
    `now` (and the per-minute and per-hour rows): the same code, counting in one
    transaction that is rolled back (it holds the store's write lock meanwhile)."""
    try:
        with write_tx(store) as conn:
            pruned = _prune(
                lambda cutoff: _log_chunk(conn, cutoff),
                lambda cutoff: _verdicts_chunk(conn, cutoff),
                now, retention, None, None,
            )  # fmt: skip
            raise _Undone(pruned, prune_rows(conn, now, retention))
    except _Undone as undone:
        return undone.pruned, undone.rows


def _prune(
    log_chunk: Callable[[float], tuple[int, int, bool]],
    verdicts_chunk: Callable[[float], tuple[int, bool]],
    now: float,
    retention: Retention,
    max_chunks: int | None,
    on_chunk: Callable[[Pruned], None] | None,
) -> Pruned:
    total = Pruned()
    chunks, more = 0, True
    while more and (max_chunks is None or chunks < max_chunks):
        rows, gone, more = log_chunk(now - retention.minutes)
        chunks += 1
        if rows or gone:
            part = Pruned(log_rows=rows, ticks=gone, more=more)
            total += part
            if on_chunk is not None:
                on_chunk(part)
    log_more = more
    chunks, more = 0, True
    while more and (max_chunks is None or chunks < max_chunks):
        n, more = verdicts_chunk(now - retention.verdicts)
        chunks += 1
        if n:
            part = Pruned(verdicts=n, more=more)
            total += part
            if on_chunk is not None:
                on_chunk(part)
    return Pruned(total.log_rows, total.ticks, total.verdicts, log_more or more)


def free_pages(store: Engine) -> int:
    """SQLite pages free inside the file (0 on PostgreSQL)."""
    if store.dialect.name != "sqlite":
        return 0
    with store.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())


def auto_vacuum(store: Engine) -> str:
    """SQLite's auto_vacuum mode of the file: none, full or incremental ("" on PostgreSQL)."""
    if store.dialect.name != "sqlite":
        return ""
    with store.connect() as conn:
        mode = int(conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one())
    return {0: "none", 1: "full", 2: "incremental"}.get(mode, str(mode))


def reclaim(store: Engine, max_steps: int | None = 1) -> int:
    """SQLite: gives free pages back to the file system, RECLAIM_PAGES per
    transaction, at most `max_steps` transactions (None: all). The pages given
    back; 0 on PostgreSQL (autovacuum marks the space for reuse) and on a SQLite
    store made without incremental auto-vacuum."""
    if store.dialect.name != "sqlite" or auto_vacuum(store) != "incremental":
        return 0
    given, steps = 0, 0
    while max_steps is None or steps < max_steps:
        free = free_pages(store)
        if not free:
            break
        write_script(store, f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({RECLAIM_PAGES}); COMMIT;")
        given += min(free, RECLAIM_PAGES)
        steps += 1
    return given


def store_bytes(store: Engine) -> int:
    """The store's size: SQLite the database file's pages in use or free (not
    its WAL), PostgreSQL every msgtally table with its indexes and TOAST."""
    with store.connect() as conn:
        if store.dialect.name == "sqlite":
            pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
            size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
            return pages * size
        query = text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema()"
        )
        return int(conn.execute(query).scalar_one())
