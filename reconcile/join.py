"""One reconcile pass: set-based SQL that joins produced and consumed ids.

The pass runs inside the database, in one transaction: it takes a bounded
slice of the inbox (new records), the pending ids whose deadline has passed,
and, for a stream that gained a consumer group, that stream's history. For
those ids it aggregates the records per (stream, id, group), classifies the
rows whose deadline has passed, updates rows classified earlier, and moves the
tallies by the difference. Python holds no per-id state: memory is bounded by
the slice, and history stays on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    union,
)

from msgtally.ingest.db import write_tx
from msgtally.ingest.tables import (
    groups,
    inbox,
    outcomes,
    pending,
    records,
)

from . import scratch as S
from .config import ReconcileConfig
from .driving import driving_join
from .sqlparts import analyze, deadline_of, upsert
from .verdicts import apply, classify

_LOCK_KEY = 0x6D7367746C6C79  # "msgtlly": one reconciler at a time per database


@dataclass(frozen=True)
class PassResult:
    batches: int
    records: int
    candidates: int
    classified: int
    updated: int

    def __add__(self, other: PassResult) -> PassResult:
        return PassResult(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, int, int, int, int]:
        return (self.batches, self.records, self.candidates, self.classified, self.updated)


def reconcile(
    engine: Engine,
    config: ReconcileConfig,
    now: float | None = None,
    on_slice: Callable[[PassResult], None] | None = None,
) -> PassResult:
    """Process everything ingested so far, in slices; classify what is due at `now`.

    `on_slice` is told after each committed slice (progress on a long backlog).
    """
    total = PassResult(0, 0, 0, 0, 0)
    while True:
        result = reconcile_slice(engine, config, time.time() if now is None else now)
        if result is None:  # another reconciler holds the lease
            return total
        total = total + result
        if on_slice is not None:
            on_slice(result)
        if result.batches == 0:
            return total


def reconcile_slice(engine: Engine, config: ReconcileConfig, now: float) -> PassResult | None:
    """One transaction: at most `config.budget` new records plus the due ids."""
    with write_tx(engine) as conn:
        if (
            conn.dialect.name == "postgresql"
            and not conn.execute(select(func.pg_try_advisory_xact_lock(_LOCK_KEY))).scalar()
        ):
            return None
        S.create_all(conn)
        _sync_config(conn, config)
        try:
            return _run(conn, config, now)
        finally:
            S.drop_all(conn)


def _sync_config(conn: Connection, config: ReconcileConfig) -> None:
    rows = [
        {"stream": s, "grp": g, "first_ts": None, "settled": 0}
        for s, gs in config.expected_groups.items()
        for g in gs
    ]
    if rows:
        conn.execute(upsert(conn, groups).on_conflict_do_nothing(), rows)
    if config.stream_deadlines:
        conn.execute(
            insert(S.t_deadline),
            [{"stream": s, "deadline": d} for s, d in config.stream_deadlines.items()],
        )


def _take_batches(conn: Connection, budget: int) -> tuple[int, int]:
    taken: list[dict[str, int]] = []
    n_records = 0
    rows = conn.execute(select(inbox.c.id, inbox.c.n).order_by(inbox.c.id).limit(10_000))
    for batch_id, n in rows:
        if taken and n_records + n > budget:
            break
        taken.append({"id": batch_id})
        n_records += n
    if taken:
        conn.execute(insert(S.t_batch), taken)
        analyze(conn, S.t_batch)
    return len(taken), n_records


def _run(conn: Connection, config: ReconcileConfig, now: float) -> PassResult:
    horizon = now - config.settle  # ids whose deadline is at or before this are due
    n_batches, n_records = _take_batches(conn, config.budget)
    r = records
    # The slice's new records, read once (IN (scratch) rather than a join:
    # SQLite then walks the batch index), summarised per (id, group).
    conn.execute(
        insert(S.t_seen).from_select(
            [c.name for c in S.t_seen.c],
            select(
                r.c.stream,
                r.c.message_id,
                r.c.grp,
                func.min(r.c.ts),
                func.sum(case((and_(r.c.kind == "consume", r.c.outcome == "error"), 1), else_=0)),
            )
            .where(r.c.batch.in_(select(S.t_batch.c.id)))
            .group_by(r.c.stream, r.c.message_id, r.c.grp),
        )
    )
    seen = S.t_seen

    # Groups seen consuming for the first time join the expected groups.
    conn.execute(
        upsert(conn, groups)
        .from_select(
            ["stream", "grp", "first_ts", "settled"],
            select(seen.c.stream, seen.c.grp, func.min(seen.c.first_ts), literal(0))
            .where(seen.c.grp != "")
            .group_by(seen.c.stream, seen.c.grp),
        )
        .on_conflict_do_nothing()
    )

    # Candidates: ids with new records, pending ids now due, and the produced
    # history of a stream that has a group not yet counted against it.
    p = pending
    o = outcomes
    unsettled = select(groups.c.stream).where(groups.c.settled == 0)
    conn.execute(
        insert(S.t_cand).from_select(
            ["stream", "message_id"],
            union(
                select(seen.c.stream, seen.c.message_id),
                select(p.c.stream, p.c.message_id).where(
                    p.c.base + deadline_of(p.c.stream, config) <= horizon
                ),
                select(o.c.stream, o.c.message_id).where(o.c.p_any == 1, o.c.stream.in_(unsettled)),
            ),
        )
    )
    analyze(conn, S.t_cand)
    n_cand = conn.execute(select(func.count()).select_from(S.t_cand)).scalar_one()

    cand = S.t_cand
    on_cand = and_(r.c.stream == cand.c.stream, r.c.message_id == cand.c.message_id)
    is_ok = case((r.c.outcome == "ok", 1), else_=0)

    # Every record of the candidates, read once: one row per (id, group), the
    # produce side under group "" (a consume always has a group).
    conn.execute(
        insert(S.t_rec).from_select(
            [c.name for c in S.t_rec.c],
            select(
                r.c.stream,
                r.c.message_id,
                r.c.grp,
                func.count(),
                func.sum(is_ok),
                func.min(r.c.ts),
                func.min(case((r.c.outcome == "ok", r.c.ts), else_=null())),
                func.max(case((r.c.outcome == "dead_letter", 1), else_=0)),
                func.max(r.c.attempt),
            )
            .select_from(driving_join(cand, r, on_cand))
            .group_by(r.c.stream, r.c.message_id, r.c.grp),
        )
    )
    rec = S.t_rec

    # Produce side per id.
    conn.execute(
        insert(S.t_p).from_select(
            ["stream", "message_id", "acked", "t0", "max_attempt"],
            select(
                rec.c.stream,
                rec.c.message_id,
                case((rec.c.ok > 0, 1), else_=0),
                rec.c.first_ts,
                rec.c.max_attempt,
            ).where(rec.c.grp == ""),
        )
    )
    analyze(conn, S.t_p)

    # Consume side per id and group, with the produce side beside it. Delivered
    # in time <=> the first ok consume is at or before the deadline.
    tp = S.t_p.alias("tp")
    in_time = rec.c.first_ok <= tp.c.t0 + deadline_of(rec.c.stream, config)
    consumed = (
        select(
            rec.c.stream,
            rec.c.message_id,
            rec.c.grp,
            case((tp.c.t0.is_not(None), 1), else_=0),
            func.coalesce(tp.c.acked, 0),
            tp.c.t0,
            func.coalesce(tp.c.t0, rec.c.first_ts),
            rec.c.n,
            rec.c.ok,
            case((in_time, 1), else_=0),
            rec.c.first_ok,
            rec.c.dl,
            case(
                (func.coalesce(tp.c.max_attempt, 0) > rec.c.max_attempt, tp.c.max_attempt),
                else_=rec.c.max_attempt,
            ),
            literal(1),
        )
        .select_from(
            rec.outerjoin(
                tp, and_(tp.c.stream == rec.c.stream, tp.c.message_id == rec.c.message_id)
            )
        )
        .where(rec.c.grp != "")
    )
    agg_cols = [c.name for c in S.t_agg.c]
    conn.execute(insert(S.t_agg).from_select(agg_cols, consumed))
    analyze(conn, S.t_agg)  # the owed-rows insert below anti-joins against it

    # Produced ids owe a row to every expected group, consumed or not; on a
    # stream no group has consumed yet, a placeholder row keeps them in view.
    g = groups
    a = S.t_agg
    not_consumed = ~exists().where(
        a.c.stream == tp.c.stream, a.c.message_id == tp.c.message_id, a.c.grp == g.c.grp
    )
    zero = literal(0)
    for group_col, has_group, where in (
        (g.c.grp, literal(1), not_consumed),
        (literal(""), zero, ~exists().where(g.c.stream == tp.c.stream)),
    ):
        src = select(
            tp.c.stream,
            tp.c.message_id,
            group_col,
            literal(1),
            tp.c.acked,
            tp.c.t0,
            tp.c.t0,
            zero,
            zero,
            zero,
            null(),
            zero,
            tp.c.max_attempt,
            has_group,
        )
        if has_group is zero:
            src = src.select_from(tp).where(where)
        else:
            src = src.select_from(tp.join(g, g.c.stream == tp.c.stream)).where(where)
        conn.execute(insert(S.t_agg).from_select(agg_cols, src))
    analyze(conn, S.t_agg)

    classified, updated = classify(conn, config, horizon)
    apply(conn, config, now)
    return PassResult(n_batches, n_records, int(n_cand), classified, updated)
