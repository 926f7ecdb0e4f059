"""Reading the SLIs and the reconciliation report out of the store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, func, select, tuple_

from msgtally.ingest.tables import groups, outcomes, pending, records, shim_drops, tallies
from msgtally.reconcile.counts import LOST, NOGROUP, RECOVERED, UNEXPECTED

from .model import COUNT_FIELDS, QUANTILES, SLI, nearest_rank

DISCREPANCY_KINDS = ("lost", "late", "duplicated", "unexpected", "dead_lettered", "recovered")


def _quantiles(conn: Connection, stream: str, group: str, n: int) -> dict[str, float | None]:
    if n == 0:
        return {name: None for name, _ in QUANTILES}
    o = outcomes
    base = (
        select(o.c.latency)
        .where(o.c.stream == stream, o.c.grp == group, o.c.latency.is_not(None))
        .order_by(o.c.latency)
        .limit(1)
    )
    return {
        name: conn.execute(base.offset(nearest_rank(q, n))).scalar_one() for name, q in QUANTILES
    }


def read_drops(conn: Connection) -> dict[tuple[str, str, str], int]:
    """Records dropped by the shims, per (stream, kind, group), over all shims."""
    d = shim_drops
    query = select(d.c.stream, d.c.kind, d.c.grp, func.sum(d.c.total)).group_by(
        d.c.stream, d.c.kind, d.c.grp
    )
    return {(s, k, g): int(n) for s, k, g, n in conn.execute(query)}


def _dropped_for(drops: dict[tuple[str, str, str], int], stream: str, group: str) -> int:
    return sum(
        n for (s, k, g), n in drops.items() if s == stream and (k == "produce" or g == group)
    )


def read_slis(conn: Connection, stream: str | None = None, group: str | None = None) -> list[SLI]:
    """Every (stream, group) with a tally, filtered by stream and group if given."""
    t = tallies
    query = select(t).where(t.c.grp != "").order_by(t.c.stream, t.c.grp)
    if stream is not None:
        query = query.where(t.c.stream == stream)
    if group is not None:
        query = query.where(t.c.grp == group)
    out = []
    drops = read_drops(conn)
    for row in conn.execute(query).mappings().all():
        n = int(row["latency_count"])
        fields: dict[str, Any] = {f: int(row[f]) for f in COUNT_FIELDS}
        fields.update(_quantiles(conn, row["stream"], row["grp"], n))
        out.append(
            SLI(
                stream=row["stream"],
                group=row["grp"],
                latency_count=n,
                latency_sum=float(row["latency_sum"]),
                records_dropped=_dropped_for(drops, row["stream"], row["grp"]),
                **fields,
            )
        )
    return out


def _kind_filter(kind: str) -> Any:
    o = outcomes
    counted = o.c.cls != NOGROUP
    return {
        "lost": o.c.cls == LOST,
        "late": o.c.late == 1,
        "duplicated": and_(counted, o.c.p_any == 1, o.c.ok > 1),
        "unexpected": o.c.cls == UNEXPECTED,
        "dead_lettered": and_(counted, o.c.acked == 1, o.c.dl == 1),
        "recovered": o.c.cls == RECOVERED,
    }[kind]


def read_discrepancies(
    conn: Connection,
    *,
    kind: str,
    stream: str | None = None,
    group: str | None = None,
    after: tuple[str, str, str] | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """The ids behind a discrepancy count, in key order, `limit` at a time."""
    if kind not in DISCREPANCY_KINDS:
        raise ValueError(f"kind has value {kind!r}. Must be one of {', '.join(DISCREPANCY_KINDS)}.")
    o = outcomes
    query = select(o).where(_kind_filter(kind), o.c.grp != "")
    if stream is not None:
        query = query.where(o.c.stream == stream)
    if group is not None:
        query = query.where(o.c.grp == group)
    if after is not None:
        query = query.where(tuple_(o.c.stream, o.c.message_id, o.c.grp) > tuple_(*after))
    query = query.order_by(o.c.stream, o.c.message_id, o.c.grp).limit(limit)
    return [
        {
            "stream": row["stream"],
            "group": row["grp"],
            "message_id": row["message_id"],
            "class": row["cls"],
            "produced_at": row["t0"],
            "deadline": row["deadline"],
            "deliveries": int(row["ok"]),
            "duplicates": max(int(row["ok"]) - 1, 0) if row["p_any"] else 0,
            "attempts": int(row["n"]),
            "latency": row["latency"],
        }
        for row in conn.execute(query).mappings()
    ]


def read_in_flight(conn: Connection) -> list[tuple[str, str, int]]:
    """Acknowledged ids, deadline not passed, not yet consumed ok, per expected group.

    Bounded by the ids in flight (the pending table), never by history.
    """
    p, g, r = pending, groups, records
    consumed_ok = (
        select(r.c.message_id)
        .where(
            r.c.stream == p.c.stream,
            r.c.message_id == p.c.message_id,
            r.c.kind == "consume",
            r.c.grp == g.c.grp,
            r.c.outcome == "ok",
        )
        .exists()
    )
    query = (
        select(p.c.stream, g.c.grp, func.count())
        .select_from(p.join(g, g.c.stream == p.c.stream))
        .where(p.c.acked == 1, ~consumed_ok)
        .group_by(p.c.stream, g.c.grp)
    )
    return [(s, grp, int(n)) for s, grp, n in conn.execute(query)]
