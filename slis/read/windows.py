"""Figures over a window of time: sums of the engine's per-minute and per-hour rows.

A window of `w` seconds at `now` is the last ceil(w / 60) minutes, the
current (partial) minute included: every figure is the exact sum of those
minute rows (msgtally.reconcile.outputs writes them with each tick), read as
the hour rows of the whole hours inside the window (each the sum of its
minutes) and the minute rows at its edges. A window reaching past the oldest
minute kept (`--retain`) starts at the hour its start falls in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, func, select

from msgtally.names import COUNT_FIELDS, TALLY_FIELDS
from msgtally.store.held import log_held_since
from msgtally.store.tables import (
    HOUR,
    MINUTE,
    latency_hours,
    latency_minutes,
    tally_hours,
    tally_minutes,
)

from .figures import QUANTILES, SLI
from .query import (
    dropped_for,
    errors_for,
    read_backfills,
    read_drops,
    read_errors,
    read_missing,
)


@dataclass
class Sums:
    """The tally deltas and latency bucket deltas of one (stream, group), added up."""

    stream: str
    group: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TALLY_FIELDS, 0))
    latency_sum: float = 0.0
    buckets: dict[str, int] = field(default_factory=dict)  # le label -> count (not cumulative)

    def add(self, other: Sums) -> None:
        for name, n in other.counts.items():
            self.counts[name] += n
        self.latency_sum += other.latency_sum
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0) + n


@dataclass(frozen=True)
class Span:
    """Rows of one resolution with `lo <= at < hi`."""

    counts: Table
    buckets: Table
    lo: int
    hi: int


def first_minute(now: float, seconds: float) -> int:
    """The start of the oldest minute of a window of `seconds` at `now`."""
    minutes = max(1, math.ceil(seconds / MINUTE))
    return int(now // MINUTE) * MINUTE - (minutes - 1) * MINUTE


def oldest_minute(conn: Connection) -> int | None:
    """The oldest minute row kept (an index lookup)."""
    at = conn.execute(select(func.min(tally_minutes.c.at))).scalar()
    return None if at is None else int(at)


def spans(start: int, now: float, oldest: int | None) -> list[Span]:
    """Which rows make up the window from `start` to `now`, given the oldest minute kept:
    the whole hours inside it from the hour rows (each the sum of its minutes), the
    minutes at either edge from the minute rows; past the oldest minute kept, the hours
    from the one `start` falls in."""
    end = int(now // MINUTE) * MINUTE + MINUTE  # the current minute included
    last_hour = end // HOUR * HOUR
    out = []
    if oldest is not None and start < oldest:
        first_hour = start // HOUR * HOUR
        if oldest > last_hour:  # no minute before this hour's: its hour row, up to now
            return [Span(tally_hours, latency_hours, first_hour, last_hour + HOUR)]
    else:
        first_hour = -(-start // HOUR) * HOUR
        if first_hour >= last_hour:
            return [Span(tally_minutes, latency_minutes, start, end)]
        if start < first_hour:
            out.append(Span(tally_minutes, latency_minutes, start, first_hour))
    out.append(Span(tally_hours, latency_hours, first_hour, last_hour))
    if last_hour < end:
        out.append(Span(tally_minutes, latency_minutes, last_hour, end))
    return out


def _where(table: Table, span: Span, pairs: Sequence[tuple[str, str]] | None,
           stream: str | None) -> list[Any]:  # fmt: skip
    conds: list[Any] = [table.c.at >= span.lo, table.c.at < span.hi]
    if stream is not None:
        conds.append(table.c.stream == stream)
    if pairs is not None:
        conds.append(table.c.grp.in_(sorted({g for _, g in pairs})))
    return conds


def _sum_span(
    conn: Connection, span: Span, by: Sequence[str], stream: str | None,
    pairs: Sequence[tuple[str, str]] | None,
) -> dict[tuple[Any, ...], Sums]:  # fmt: skip
    """Sums per key (`by`: column names of the tables) over the span's rows."""
    t, b = span.counts, span.buckets
    keys = [t.c[k] for k in by]
    query = (
        select(*keys, *(func.sum(t.c[f]) for f in TALLY_FIELDS), func.sum(t.c.latency_sum))
        .where(*_where(t, span, pairs, stream))
        .group_by(*keys)
    )
    out: dict[tuple[Any, ...], Sums] = {}
    n = len(by)
    for row in conn.execute(query):
        key = tuple(row[:n])
        values = row[n:]
        s = out.setdefault(key, Sums(*_names(by, key)))
        s.counts = {f: int(v or 0) for f, v in zip(TALLY_FIELDS, values, strict=False)}
        s.latency_sum = float(values[-1] or 0.0)
    bkeys = [b.c[k] for k in by]
    bquery = (
        select(*bkeys, b.c.le, func.sum(b.c.count))
        .where(*_where(b, span, pairs, stream))
        .group_by(*bkeys, b.c.le)
    )
    for row in conn.execute(bquery):
        key = tuple(row[:n])
        s = out.setdefault(key, Sums(*_names(by, key)))
        s.buckets[str(row[n])] = int(row[n + 1])
    return out


def _names(by: Sequence[str], key: tuple[Any, ...]) -> tuple[str, str]:
    named = dict(zip(by, key, strict=True))
    return str(named.get("stream", "")), str(named.get("grp", ""))


def read_window(
    conn: Connection, now: float, seconds: float, *, stream: str | None = None,
    group: str | None = None,
) -> list[Sums]:  # fmt: skip
    """Sums per (stream, group) over the window of `seconds` at `now`, in key order."""
    start = first_minute(now, seconds)
    total: dict[tuple[Any, ...], Sums] = {}
    for span in spans(start, now, oldest_minute(conn)):
        for key, s in _sum_span(conn, span, ("stream", "grp"), stream, None).items():
            total.setdefault(key, Sums(s.stream, s.group)).add(s)
    rows = [s for _, s in sorted(total.items())]
    return [s for s in rows if group is None or s.group == group]


def step_for(seconds: float) -> int:
    """The resolution of a graph over `seconds`: minutes up to a day, hours beyond."""
    return MINUTE if seconds <= 86_400 else HOUR


def read_series(
    conn: Connection, start: float, now: float, pairs: Sequence[tuple[str, str]], step: int
) -> list[tuple[int, Sums]]:
    """The pairs' sums per step (MINUTE or HOUR) from `start` to `now`, added over the
    pairs, in time order; steps without rows are left out (and minutes past --retain)."""
    counts, buckets = (tally_minutes, latency_minutes) if step == MINUTE else (
        tally_hours, latency_hours)  # fmt: skip
    span = Span(counts, buckets, int(start // step * step), int(now // step * step) + step)
    out: dict[int, Sums] = {}
    for stream in sorted({s for s, _ in pairs}):
        mine = [p for p in pairs if p[0] == stream]
        rows = _sum_span(conn, span, ("at", "stream", "grp"), stream, mine)
        for (at, *_), s in rows.items():
            out.setdefault(int(at), Sums(stream, "*")).add(s)
    return sorted(out.items())


def bucket_quantile(buckets: Mapping[str, int], q: float) -> float | None:
    """The q-quantile of a histogram's buckets (le label -> count, not cumulative),
    interpolated linearly within its bucket as Prometheus's histogram_quantile does;
    the highest finite bound when it falls in +Inf. None without observations."""
    bounds = sorted((math.inf if le == "+Inf" else float(le), n) for le, n in buckets.items())
    total = sum(n for _, n in bounds)
    if total <= 0:
        return None
    rank = q * total
    seen, lower = 0, 0.0
    for upper, n in bounds:
        if n and seen + n >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        if not math.isinf(upper):
            lower = upper
    return lower


def as_slis(conn: Connection, sums: Iterable[Sums]) -> list[SLI]:
    """Window sums as SLI rows; measurement loss and the error classes are the
    running totals (not windowed)."""
    drops = read_drops(conn)
    missing = read_missing(conn)
    errors = read_errors(conn)
    held = log_held_since(conn)
    since = read_backfills(conn)
    out = []
    for s in sums:
        fields: dict[str, Any] = {f: s.counts[f] for f in COUNT_FIELDS}
        fields.update({name: bucket_quantile(s.buckets, q) for name, q in QUANTILES})
        out.append(
            SLI(
                stream=s.stream,
                group=s.group,
                latency_count=s.counts["latency_count"],
                latency_sum=s.latency_sum,
                records_dropped=dropped_for(drops, s.stream, s.group),
                produce_records_missing=missing.get((s.stream, "produce", ""), 0),
                consume_records_missing=missing.get((s.stream, "consume", s.group), 0),
                errors=errors_for(errors, s.stream, s.group),
                log_held_since=held,
                backfilled_since=since.get((s.stream, s.group)),
                **fields,
            )
        )
    return out


def read_window_slis(
    conn: Connection, now: float, seconds: float, stream: str | None = None,
    group: str | None = None,
) -> list[SLI]:  # fmt: skip
    """The SLIs over the window of `seconds` at `now`, per (stream, group)."""
    return as_slis(conn, read_window(conn, now, seconds, stream=stream, group=group))
