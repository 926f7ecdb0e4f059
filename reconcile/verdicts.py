"""Verdicts: classify the rows that are due, update those classified before,
and move the tallies, the histogram, pending ids and the inbox accordingly."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    true,
    update,
)

from msgtally.ingest.tables import (
    TALLY_FIELDS,
    groups,
    inbox,
    latency_buckets,
    meta,
    outcomes,
    pending,
    tallies,
)

from . import counts as C
from . import scratch as S
from .config import ReconcileConfig, bucket_label
from .sqlparts import add_on_conflict, deadline_of, upsert


def classify(conn: Connection, config: ReconcileConfig, horizon: float) -> tuple[int, int]:
    """Fill t_new: rows due now (classified) and rows classified before (updated)."""
    a, o = S.t_agg, outcomes
    deadline = a.c.base + deadline_of(a.c.stream, config)
    joined = a.outerjoin(
        o, and_(o.c.stream == a.c.stream, o.c.message_id == a.c.message_id, o.c.grp == a.c.grp)
    )
    max_attempt = case((o.c.max_attempt > a.c.max_attempt, o.c.max_attempt), else_=a.c.max_attempt)
    old = [o.c[name] for name in S.STATE_COLUMNS if name not in ("t0", "deadline")]
    old_names = ["o_" + name for name in S.STATE_COLUMNS if name not in ("t0", "deadline")]
    key = [a.c.stream, a.c.message_id, a.c.grp]
    names = ["stream", "message_id", "grp", *S.STATE_COLUMNS, *old_names]

    fresh = (
        select(
            *key,
            C.classify(
                p_any=a.c.p_any == 1,
                acked=a.c.acked,
                ok=a.c.ok,
                ok_in_time=a.c.ok_in_time,
                has_group=a.c.has_group,
            ),
            a.c.acked,
            a.c.p_any,
            case((and_(a.c.acked == 1, a.c.ok_in_time == 0, a.c.ok > 0), 1), else_=0),
            a.c.t0,
            deadline,
            a.c.n,
            a.c.ok,
            a.c.max_attempt,
            a.c.dl,
            C.first_latency(a.c.acked, null(), a.c.ok, a.c.first_ok, a.c.t0),
            *[null() for _ in old],
        )
        .select_from(joined)
        .where(o.c.stream.is_(None), deadline <= horizon)
    )
    conn.execute(insert(S.t_new).from_select(names, fresh))

    later = (
        select(
            *key,
            C.advance_cls(o.c.cls, a.c.ok),
            o.c.acked,
            o.c.p_any,
            C.advance_late(o.c.cls, o.c.late, a.c.ok),
            o.c.t0,
            o.c.deadline,
            a.c.n,
            a.c.ok,
            max_attempt,
            a.c.dl,
            C.first_latency(o.c.acked, o.c.latency, a.c.ok, a.c.first_ok, o.c.t0),
            *old,
        )
        .select_from(joined)
        .where(o.c.stream.is_not(None))
    )
    conn.execute(insert(S.t_new).from_select(names, later))
    # rowcount of INSERT ... SELECT is not reliable across drivers: count instead.
    n = S.t_new
    row = conn.execute(select(func.count(), func.count(n.c.o_cls)).select_from(n)).one()
    return int(row[0]) - int(row[1]), int(row[1])


def _state(t: Any, prefix: str) -> C.State:
    return C.State(**{f: t.c[prefix + f] for f in C.State.__dataclass_fields__})


def apply(conn: Connection, config: ReconcileConfig, now: float) -> None:
    """Move tallies and buckets, write the new states, settle pending and inbox."""
    n = S.t_new
    new, old = C.counts(_state(n, "")), C.counts(_state(n, "o_"))
    counted = n.c.grp != ""
    deltas = [func.sum(new[f] - old[f]) for f in TALLY_FIELDS if f != "consume_errors"]
    fresh_latency = and_(n.c.latency.is_not(None), n.c.o_latency.is_(None))
    tally_names = [f for f in TALLY_FIELDS if f != "consume_errors"]
    add_on_conflict(
        conn,
        tallies,
        ("stream", "grp"),
        select(
            n.c.stream,
            n.c.grp,
            *deltas,
            func.coalesce(func.sum(case((fresh_latency, n.c.latency), else_=0.0)), 0.0),
        )
        .where(counted)
        .group_by(n.c.stream, n.c.grp),
        ["stream", "grp", *tally_names, "latency_sum"],
    )

    bounds = config.latency_buckets
    le = case(
        *((n.c.latency <= b, literal(bucket_label(b))) for b in bounds), else_=literal("+Inf")
    )
    add_on_conflict(
        conn,
        latency_buckets,
        ("stream", "grp", "le"),
        select(n.c.stream, n.c.grp, le, func.count())
        .where(counted, fresh_latency)
        .group_by(n.c.stream, n.c.grp, le),
        ["stream", "grp", "le", "count"],
    )

    # Processing failures are counted per record, from the new records only.
    seen = S.t_seen
    add_on_conflict(
        conn,
        tallies,
        ("stream", "grp"),
        select(seen.c.stream, seen.c.grp, func.sum(seen.c.errors))
        .where(seen.c.errors > 0)
        .group_by(seen.c.stream, seen.c.grp),
        ["stream", "grp", "consume_errors"],
    )

    # Write the states: new rows, and old rows whose state changed.
    o = outcomes
    changed = (
        n.c.o_cls.is_(None)
        | (n.c.cls != n.c.o_cls)
        | (n.c.late != n.c.o_late)
        | (n.c.n != n.c.o_n)
        | (n.c.ok != n.c.o_ok)
        | (n.c.max_attempt != n.c.o_max_attempt)
        | (n.c.dl != n.c.o_dl)
        | (n.c.latency.is_not(None) & n.c.o_latency.is_(None))
    )
    cols = ["stream", "message_id", "grp", *S.STATE_COLUMNS]
    stmt = upsert(conn, o).from_select(
        [*cols, "classified_at"],
        select(*[n.c[c] for c in cols], literal(now)).where(true(), changed),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["stream", "message_id", "grp"],
        set_={c: stmt.excluded[c] for c in S.STATE_COLUMNS},
    )
    conn.execute(stmt)

    # Pending: the candidates' rows that are still unclassified, earliest base.
    cand, a, p = S.t_cand, S.t_agg, pending
    conn.execute(
        delete(p).where(
            exists().where(cand.c.stream == p.c.stream, cand.c.message_id == p.c.message_id)
        )
    )
    conn.execute(
        insert(p).from_select(
            ["stream", "message_id", "base", "acked"],
            select(a.c.stream, a.c.message_id, func.min(a.c.base), func.max(a.c.acked))
            .where(
                ~exists().where(
                    o.c.stream == a.c.stream, o.c.message_id == a.c.message_id, o.c.grp == a.c.grp
                )
            )
            .group_by(a.c.stream, a.c.message_id),
        )
    )

    conn.execute(update(groups).where(groups.c.settled == 0).values(settled=1))
    conn.execute(delete(inbox).where(inbox.c.id.in_(select(S.t_batch.c.id))))
    conn.execute(
        upsert(conn, meta)
        .values(key="last_pass_at", value=repr(now))
        .on_conflict_do_update(index_elements=["key"], set_={"value": repr(now)})
    )
