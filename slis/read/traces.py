"""The trace id of a few discrepant ids, found in the log around their time.

The verdicts keep no trace id: the records that carried one are in the log.
For the first page of ids the status page shows, the log rows received
around each id's first produce (from `before` seconds before it to `after`
seconds past its deadline) are read, found by a binary search on the log's
ids (their receipt times rise with them), at most `MAX_ROWS` of them: an id
whose records are not there shows without a link.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, func, select

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.schema import Produce
from msgtally.store.tables import log

MAX_ROWS = 2_000


def _first_row_at(conn: Connection, at: float) -> int:
    """The lowest log id received at or after `at` (ids rise with receipt times)."""
    lo = conn.execute(select(func.min(log.c.id))).scalar() or 0
    hi = conn.execute(select(func.max(log.c.id))).scalar() or 0
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(
            select(log.c.id, log.c.received_at).where(log.c.id >= mid).order_by(log.c.id).limit(1)
        ).first()
        if row is None or row.received_at >= at:
            hi = mid
        else:
            lo = int(row.id) + 1
    return int(lo)


def trace_ids(
    conn: Connection, ids: Iterable[tuple[str, str, float, float]], *, before: float = 60.0,
    after: float = 600.0,
) -> dict[tuple[str, str], str]:  # fmt: skip
    """(stream, message id) -> a trace id of its records, for ids given as
    (stream, message id, first produce, deadline); produces' trace ids first."""
    wanted = list(ids)
    if not wanted:
        return {}
    keys = {(s, m) for s, m, _, _ in wanted}
    start = min(t0 for _, _, t0, _ in wanted) - before
    end = max(d for _, _, _, d in wanted) + after
    first = _first_row_at(conn, start)
    rows = conn.execute(
        select(log.c.body, log.c.received_at)
        .where(log.c.id >= first)
        .order_by(log.c.id)
        .limit(MAX_ROWS)
    )
    found: dict[tuple[str, str], str] = {}
    for body, received_at in rows:
        if received_at > end:
            break
        for r in logbody.decode(bytes(body)).records:
            key = (r.stream, r.message_id)
            if key in keys and r.trace_id and (key not in found or isinstance(r, Produce)):
                found[key] = r.trace_id.lower()
    return found
