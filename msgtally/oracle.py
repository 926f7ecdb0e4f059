"""A plain Python oracle for the outcome definitions of docs/definitions.md.

Written from "The delivery record" and "Outcomes of an id", not from the
engine: records in, per (stream, group) counts, sorted latencies and
discrepancy ids out, as they stand once every id's deadline has passed (the
one-shot view). The tests hold the engine to it, and the demo asks it for the
ground truth of the pipeline it simulates.

Nothing here is clever on purpose: lists grouped by id, one rule per line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from msgtally.names import COUNT_FIELDS

DEFAULT_DEADLINE = 300.0


class Record(NamedTuple):
    """One produce or consume event, as the tests build histories: the wire
    fields in their order (msgtally.ingest.shim.wire.FIELDS); group "" for produces."""

    stream: str
    kind: str
    message_id: str
    ts: float
    group: str = ""
    attempt: int = 1
    outcome: str = "ok"
    producer: str | None = None
    seq: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    record_id: str | None = None
    error: str | None = None


class Mark(NamedTuple):
    """A sender's high-water mark of one sequence: it numbered every seq up to `last`."""

    producer: str
    stream: str
    kind: str
    last: int
    group: str = ""


COUNT_NAMES = COUNT_FIELDS  # the names are the contract; the logic below is independent
# The kinds of discrepancy report an id can appear in (per stream and group).
ID_KINDS = ("lost", "late", "duplicated", "unexpected", "dead_lettered", "recovered")


@dataclass
class GroupOutcome:
    """What one (stream, consumer group) counts for, after every deadline."""

    stream: str
    group: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_NAMES, 0))
    latencies: list[float] = field(default_factory=list)
    ids: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in ID_KINDS})

    def is_empty(self) -> bool:
        return not any(self.counts.values()) and not self.latencies


def same_record_key(r: Record) -> tuple[object, ...]:
    """Two records are the same when they carry the same record_id, or,
    without one, when every field is equal."""
    if r.record_id is not None:
        return ("record_id", r.record_id)
    return ("fields", *r)


def dedupe(records: Iterable[Record]) -> list[Record]:
    """The records the store keeps: the first of every set of same records."""
    seen: set[tuple[object, ...]] = set()
    kept: list[Record] = []
    for r in records:
        key = same_record_key(r)
        if key in seen:
            continue
        seen.add(key)
        kept.append(r)
    return kept


def expected_groups_of(
    records: Sequence[Record], stream: str, configured: Mapping[str, Sequence[str]]
) -> list[str]:
    """Groups that consumed from the stream at all, plus the configured ones."""
    groups = {r.group for r in records if r.stream == stream and r.kind == "consume"}
    groups.update(configured.get(stream, ()))
    return sorted(groups)


def outcome_of_id(
    produces: list[Record], consumes: list[Record], deadline_seconds: float
) -> dict[str, object]:
    """One message id on one stream for one group: the table of docs/definitions.md."""
    P = produces
    A = [r for r in P if r.outcome == "ok"]
    C = consumes
    OK = [r for r in C if r.outcome == "ok"]
    DL = [r for r in C if r.outcome == "dead_letter"]

    out: dict[str, object] = dict.fromkeys(COUNT_NAMES, 0)
    out["latency"] = None
    out["consume_errors"] = len([r for r in C if r.outcome == "error"])

    if P:
        t0 = min(r.ts for r in P)
        deadline = t0 + deadline_seconds
        produced = len(A) > 0
        delivered = produced and any(r.ts <= deadline for r in OK)
        lost = produced and not delivered
        late = lost and any(r.ts > deadline for r in OK)
        out["produced"] = int(produced)
        out["delivered"] = int(delivered)
        out["lost"] = int(lost)
        out["late"] = int(late)
        out["recovered"] = int(not A and len(OK) > 0)
        out["duplicated"] = max(len(OK) - 1, 0)
        out["retried"] = int(max(r.attempt for r in P + C) > 1)
        out["attempts"] = len(C)
        out["dead_lettered"] = int(produced and len(DL) > 0)
        if produced and OK:
            out["latency"] = min(r.ts for r in OK) - t0
    else:
        out["unexpected"] = int(len(C) > 0)
    return out


def oracle(
    records: Iterable[Record],
    *,
    deadline: float = DEFAULT_DEADLINE,
    stream_deadlines: Mapping[str, float] | None = None,
    expected_groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[tuple[str, str], GroupOutcome]:
    """Every expected (stream, group) and what it counts for once all deadlines passed."""
    stream_deadlines = stream_deadlines or {}
    configured = expected_groups or {}
    kept = dedupe(records)
    streams = sorted({r.stream for r in kept} | set(configured))

    # The records of each id, by stream: produces, and consumes by group.
    produces: dict[tuple[str, str], list[Record]] = {}
    consumes: dict[tuple[str, str, str], list[Record]] = {}
    for r in kept:
        if r.kind == "produce":
            produces.setdefault((r.stream, r.message_id), []).append(r)
        else:
            consumes.setdefault((r.stream, r.message_id, r.group), []).append(r)

    result: dict[tuple[str, str], GroupOutcome] = {}
    for stream in streams:
        on_stream = [r for r in kept if r.stream == stream]
        seconds = stream_deadlines.get(stream, deadline)
        ids = sorted({r.message_id for r in on_stream})
        for group in expected_groups_of(on_stream, stream, configured):
            g = GroupOutcome(stream, group)
            for mid in ids:
                one = outcome_of_id(
                    produces.get((stream, mid), []),
                    consumes.get((stream, mid, group), []),
                    seconds,
                )
                for name in COUNT_NAMES:
                    value = one[name]
                    assert isinstance(value, int)
                    g.counts[name] += value
                latency = one["latency"]
                if isinstance(latency, float):
                    g.latencies.append(latency)
                for kind in ID_KINDS:
                    if one[kind]:
                        g.ids[kind].add(mid)
            g.latencies.sort()
            result[(stream, group)] = g
    return result


def error_counts(records: Iterable[Record]) -> dict[tuple[str, str, str, str], int]:
    """Failed records by error class, per (stream, kind, group, class), group ""
    for produces: every kept record (a resend is one) that carries a class,
    whatever its id became."""
    out: dict[tuple[str, str, str, str], int] = {}
    for r in dedupe(records):
        if r.error is not None:
            key = (r.stream, r.kind, r.group if r.kind == "consume" else "", r.error)
            out[key] = out.get(key, 0) + 1
    return out


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The q-quantile of sorted values, nearest-rank: the smallest value with
    at least q of the values at or below it."""
    if not values:
        return None
    n = len(values)
    for i, value in enumerate(values):
        if (i + 1) >= q * n:
            return value
    return values[-1]


def missing_records(
    records: Iterable[Record], marks: Iterable[Mark] = ()
) -> dict[tuple[str, str, str], int]:
    """Records missing from the senders' numbering, once every hole settled, per
    (stream, kind, group), every producer added up: in each sequence (producer,
    stream, kind, group), the numbers from 1 to the highest one known (a
    record's or a mark's) that no record carries. Only records that carry a
    producer and a seq are in a sequence (callers pass the records of senders
    that number per sequence)."""
    seen: dict[tuple[str, str, str, str], set[int]] = {}
    top: dict[tuple[str, str, str, str], int] = {}
    for r in records:
        if r.producer is None or r.seq is None:
            continue
        key = (r.producer, r.stream, r.kind, r.group)
        seen.setdefault(key, set()).add(r.seq)
        top[key] = max(top.get(key, 0), r.seq)
    for m in marks:
        key = (m.producer, m.stream, m.kind, m.group)
        seen.setdefault(key, set())
        top[key] = max(top.get(key, 0), m.last)
    out: dict[tuple[str, str, str], int] = {}
    for key, last in top.items():
        n = len([s for s in range(1, last + 1) if s not in seen[key]])
        if n:
            _, stream, kind, group = key
            out[(stream, kind, group)] = out.get((stream, kind, group), 0) + n
    return out
