"""Reading the SLIs and the reconciliation report out of the store.

Every read costs what it shows, not what was stored: the tallies, the
latency sketch and the verdicts of discrepant ids are kept per (stream,
group) or per id by the engine, so nothing here scans history.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, func, select, tuple_

from msgtally.names import COUNT_FIELDS, TALLY_FIELDS
from msgtally.record import ERROR_CLASSES, KINDS
from msgtally.store.held import log_held_since
from msgtally.store.tables import (
    backfills,
    delivery_errors,
    in_flight,
    latency_sketch,
    records_missing,
    shim_drops,
    tallies,
    verdicts,
)

from .figures import QUANTILES, SLI
from .sketch import quantile

DISCREPANCY_KINDS = ("lost", "late", "duplicated", "unexpected", "dead_lettered", "recovered")


def _sketches(conn: Connection) -> dict[tuple[str, str], dict[int, int]]:
    k = latency_sketch
    out: dict[tuple[str, str], dict[int, int]] = {}
    query = select(k.c.stream, k.c.grp, k.c.bin, func.sum(k.c.count)).group_by(
        k.c.stream, k.c.grp, k.c.bin
    )
    for stream, grp, b, n in conn.execute(query):
        out.setdefault((stream, grp), {})[int(b)] = int(n)
    return out


def summed_tallies() -> Any:
    """The running totals per (stream, group): the rows of every partition added up
    (one row, partition 0, on a single engine's store). Columns named as `tallies`'."""
    t = tallies
    return select(
        t.c.stream, t.c.grp,
        *(func.sum(t.c[name]).label(name) for name in TALLY_FIELDS),
        func.sum(t.c.latency_sum).label("latency_sum"),
    ).group_by(t.c.stream, t.c.grp)  # fmt: skip


def read_drops(conn: Connection) -> dict[tuple[str, str, str], int]:
    """Records dropped by the shims, per (stream, kind, group), over all shims."""
    d = shim_drops
    query = select(d.c.stream, d.c.kind, d.c.grp, func.sum(d.c.total)).group_by(
        d.c.stream, d.c.kind, d.c.grp
    )
    return {(s, k, g): int(n) for s, k, g, n in conn.execute(query)}


def read_missing(conn: Connection) -> dict[tuple[str, str, str], int]:
    """Records missing from the senders' numbering, per (stream, kind, group)."""
    m = records_missing
    query = select(m.c.stream, m.c.kind, m.c.grp, func.sum(m.c.total)).group_by(
        m.c.stream, m.c.kind, m.c.grp
    )
    return {(s, k, g): int(n) for s, k, g, n in conn.execute(query)}


def read_drops_by_source(
    conn: Connection, stream: str, group: str | None
) -> list[tuple[str, str, str, int]]:
    """What each shim instance dropped on `stream` (its produces, and its consumes of
    `group`, or of every group): (source, kind, group, total), the largest first."""
    d = shim_drops
    query = select(d.c.source, d.c.kind, d.c.grp, d.c.total).where(
        d.c.stream == stream, d.c.total > 0
    )
    if group is not None:
        query = query.where((d.c.kind == "produce") | (d.c.grp == group))
    rows = [(src, k, g, int(n)) for src, k, g, n in conn.execute(query)]
    return sorted(rows, key=lambda r: (-r[3], r[0], r[1], r[2]))


def read_errors(conn: Connection) -> dict[tuple[str, str, str, str], int]:
    """Failed records by error class, per (stream, kind, group, class); group "" for produces."""
    e = delivery_errors
    query = select(e.c.stream, e.c.kind, e.c.grp, e.c.error, func.sum(e.c.total)).group_by(
        e.c.stream, e.c.kind, e.c.grp, e.c.error
    )
    return {(s, k, g, c): int(n) for s, k, g, c, n in conn.execute(query)}


def errors_for(
    errors: dict[tuple[str, str, str, str], int], stream: str, group: str
) -> dict[str, dict[str, int]]:
    """A row's failed records by class: the stream's produces, this group's consumes."""
    out = {kind: dict.fromkeys(ERROR_CLASSES, 0) for kind in KINDS}
    for (s, k, g, c), n in errors.items():
        if s == stream and (k == "produce" or g == group) and c in ERROR_CLASSES:
            out[k][c] += n
    return out


def dropped_for(drops: dict[tuple[str, str, str], int], stream: str, group: str) -> int:
    return sum(
        n for (s, k, g), n in drops.items() if s == stream and (k == "produce" or g == group)
    )


def read_slis(
    conn: Connection,
    stream: str | None = None,
    group: str | None = None,
    now: float | None = None,
) -> list[SLI]:
    """Every (stream, group) with a tally or ids in flight, filtered by stream and
    group if given; the oldest in flight's age as of `now` (the clock)."""
    query = summed_tallies().order_by(tallies.c.stream, tallies.c.grp)
    t = tallies
    if stream is not None:
        query = query.where(t.c.stream == stream)
    if group is not None:
        query = query.where(t.c.grp == group)
    drops = read_drops(conn)
    missing = read_missing(conn)
    errors = read_errors(conn)
    sketches = _sketches(conn)
    flight = {
        (f.stream, f.group): f
        for f in read_in_flight(conn)
        if stream in (None, f.stream) and group in (None, f.group)
    }
    clock = time.time() if now is None else now
    held = log_held_since(conn)
    since = read_backfills(conn)
    rows = {(r["stream"], r["grp"]): r for r in conn.execute(query).mappings().all()}
    out = []
    for key in sorted(rows.keys() | flight.keys()):
        row = rows.get(key)
        bins = sketches.get(key, {})
        fields: dict[str, Any] = {f: int(row[f]) if row else 0 for f in COUNT_FIELDS}
        fields.update({name: quantile(bins, q) for name, q in QUANTILES})
        waiting = flight.get(key)
        out.append(
            SLI(
                stream=key[0],
                group=key[1],
                latency_count=int(row["latency_count"]) if row else 0,
                latency_sum=float(row["latency_sum"]) if row else 0.0,
                records_dropped=dropped_for(drops, *key),
                produce_records_missing=missing.get((key[0], "produce", ""), 0),
                consume_records_missing=missing.get((key[0], "consume", key[1]), 0),
                errors=errors_for(errors, *key),
                in_flight=waiting.n if waiting else 0,
                in_flight_oldest_age_seconds=(
                    max(0.0, clock - waiting.oldest)
                    if waiting and waiting.oldest is not None
                    else None
                ),
                log_held_since=held,
                backfilled_since=since.get(key),
                **fields,
            )
        )
    return out


def read_backfills(conn: Connection) -> dict[tuple[str, str], float]:
    """Groups back-filled from a pruned log: (stream, group) -> from when they count ids."""
    b = backfills
    return {(s, g): float(t) for s, g, t in conn.execute(select(b.c.stream, b.c.grp, b.c.since))}


def _kind_filter(kind: str) -> Any:
    """The verdict rows whose id counts for `kind`: a count of the machine's
    `counts_of` above 0, read off the row's stored slot state. The property
    tests hold every kind's ids to the oracle's, as they hold the tallies
    (tests/harness.py `assert_discrepancies`, on both stores)."""
    v = verdicts
    return {
        "lost": v.c.cls == "lost",
        "late": v.c.late == 1,
        "duplicated": and_(v.c.p_any == 1, v.c.ok > 1),
        "unexpected": v.c.cls == "unexpected",
        "dead_lettered": and_(v.c.acked == 1, v.c.dl == 1),
        "recovered": v.c.cls == "recovered",
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
    v = verdicts
    query = select(v).where(_kind_filter(kind))
    if stream is not None:
        query = query.where(v.c.stream == stream)
    if group is not None:
        query = query.where(v.c.grp == group)
    if after is not None:
        query = query.where(tuple_(v.c.stream, v.c.message_id, v.c.grp) > tuple_(*after))
    query = query.order_by(v.c.stream, v.c.message_id, v.c.grp).limit(limit)
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


class InFlight(NamedTuple):
    """Acknowledged ids not yet delivered nor judged for a group (as of the last
    tick), and the first produce of the oldest of them."""

    stream: str
    group: str
    n: int
    oldest: float | None


def read_in_flight(conn: Connection) -> list[InFlight]:
    f = in_flight
    query = select(f.c.stream, f.c.grp, func.sum(f.c.n), func.min(f.c.oldest)).group_by(
        f.c.stream, f.c.grp
    )
    rows = conn.execute(query)
    return [InFlight(s, g, int(n), None if t is None else float(t)) for s, g, n, t in rows]
