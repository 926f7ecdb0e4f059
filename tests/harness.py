"""Driving the store under test: ingest, reconcile, read figures; compare with the oracle."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, select

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.schema import Batch, Produce, parse_batch, parse_body
from msgtally.ingest.intake.writer import write_batch
from msgtally.ingest.shim.wire import FIELDS, record_to_json
from msgtally.oracle import (
    COUNT_NAMES,
    ID_KINDS,
    GroupOutcome,
    Mark,
    Record,
    nearest_rank,
    same_record_key,
)
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.reconcile.history import Retention
from msgtally.slis.read.query import read_discrepancies, read_errors, read_missing, read_slis
from msgtally.slis.read.sketch import RELATIVE_ERROR
from msgtally.store.db import write_tx
from msgtally.store.tables import log, meta, metadata

T = 1_700_000_000.0  # a base time; histories are offsets from it
# Histories dated from T are years old: a collector that must keep their log and
# verdict rows (a rebuild, a late record for a forgotten id) keeps everything.
KEEP_ALL = Retention(minutes=1e12, hours=1e12, verdicts=1e12)

Figures = dict[tuple[str, str], dict[str, Any]]
QUANTILES = (("latency_p50", 0.50), ("latency_p90", 0.90), ("latency_p99", 0.99))


def produce(
    stream: str,
    mid: str,
    at: float,
    *,
    outcome: str = "ok",
    attempt: int = 1,
    record_id: str | None = None,
) -> Record:
    return Record(stream, "produce", mid, T + at, "", attempt, outcome, record_id=record_id)


def consume(
    stream: str,
    mid: str,
    group: str,
    at: float,
    *,
    outcome: str = "ok",
    attempt: int = 1,
    record_id: str | None = None,
) -> Record:
    return Record(stream, "consume", mid, T + at, group, attempt, outcome, record_id=record_id)


def ingest(
    store: Engine,
    records: Sequence[Record],
    received_at: float | None = None,
    sequences: Sequence[Mark] | None = None,
) -> int:
    """Log the records as one accepted request (through the contract's validation).

    With `sequences` (high-water marks, maybe none), the request is from a
    sender that numbers its records per sequence: their seqs are checked.
    """
    wire = [record_to_json(r) for r in records]
    if sequences is None:
        return write_batch(store, Batch(parse_batch(wire), [], None), received_at)
    body = {"records": wire, "sequences": [m._asdict() for m in sequences]}
    return write_batch(store, parse_body(json.dumps(body).encode()), received_at)


def in_time_order_across(requests: Sequence[Sequence[Record]]) -> list[list[Record]]:
    """The requests, each id's records moved among that id's own places so that its
    earlier `ts` come in an earlier or the same request, as shims send an id's
    records (an id is judged delivered right after the request that brings its
    in-time delivery: the table's figures hold for such arrivals). Within a
    request an id's records keep their drawn order; other records stay put."""
    places: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k, request in enumerate(requests):
        for i, r in enumerate(request):
            places.setdefault((r.stream, r.message_id), []).append((k, i))
    out = [list(request) for request in requests]
    for where in places.values():
        by_ts = sorted(where, key=lambda at: requests[at[0]][at[1]].ts)  # stable on ties
        start = 0
        for k in sorted({at[0] for at in where}):
            slots = [at for at in where if at[0] == k]
            taken = sorted(by_ts[start : start + len(slots)])  # in their drawn order
            start += len(slots)
            for (_k, i), (tk, ti) in zip(slots, taken, strict=True):
                out[k][i] = requests[tk][ti]
    return out


def missing(store: Engine) -> dict[tuple[str, str, str], int]:
    """Records the engine declared missing, per (stream, kind, group)."""
    with store.connect() as conn:
        return read_missing(conn)


def errors(store: Engine) -> dict[tuple[str, str, str, str], int]:
    """Failed records the engine counted by class, per (stream, kind, group, class)."""
    with store.connect() as conn:
        return read_errors(conn)


def logged(store: Engine, stream: str | None = None) -> list[dict[str, Any]]:
    """Every distinct record the collector logged, sorted: a record sent twice is
    one (by the contract's rule, as the oracle applies it). `group` is "" for
    produces; hex ids as the sender wrote them."""
    with store.connect() as conn:
        bodies = [bytes(b) for (b,) in conn.execute(select(log.c.body).order_by(log.c.id))]
    seen: set[tuple[object, ...]] = set()
    out = []
    for body in bodies:
        for rec in logbody.decode(body).records:
            fields = {name: getattr(rec, name, None) for name in FIELDS if name != "kind"}
            fields["group"] = fields["group"] or ""
            r = Record(kind="produce" if isinstance(rec, Produce) else "consume", **fields)
            if (stream is not None and r.stream != stream) or same_record_key(r) in seen:
                continue
            seen.add(same_record_key(r))
            out.append(r._asdict())
    return sorted(out, key=lambda d: (d["stream"], d["message_id"], d["kind"], d["ts"]))


def repeats(store: Engine) -> int:
    """Records the engine recognised as sent before, so far (as of the last tick)."""
    with store.connect() as conn:
        value = conn.execute(select(meta.c.value).where(meta.c.key == "records_repeated"))
        return int(value.scalar_one_or_none() or 0)


def close_to(got: float | None, exact: float | None) -> bool:
    """A sketched quantile is within the sketch's relative error of the exact one."""
    if got is None or exact is None:
        return got is exact
    return abs(got - exact) <= RELATIVE_ERROR * abs(exact) + 1e-9


def run(store: Engine, config: ReconcileConfig, at: float) -> None:
    """One reconcile pass at T + at."""
    reconcile(store, config, T + at)


def wipe(store: Engine) -> None:
    """Empty every store table: a fresh store for the next example."""
    with write_tx(store) as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def figures(store: Engine) -> Figures:
    """read_slis as {(stream, group): {count..., latency_count, latency_sum, p50, p90, p99}}."""
    with store.connect() as conn:
        slis = read_slis(conn)
    out: Figures = {}
    for s in slis:
        row: dict[str, Any] = {name: getattr(s, name) for name in COUNT_NAMES}
        row["latency_count"] = s.latency_count
        row["latency_sum"] = s.latency_sum
        for name, _ in QUANTILES:
            row[name] = getattr(s, name)
        out[(s.stream, s.group)] = row
    return out


def discrepancy_ids(store: Engine, kind: str) -> dict[tuple[str, str], set[str]]:
    """Every id of one discrepancy report, per (stream, group), paged through."""
    out: dict[tuple[str, str], set[str]] = {}
    after: tuple[str, str, str] | None = None
    with store.connect() as conn:
        while True:
            rows = read_discrepancies(conn, kind=kind, after=after, limit=50)
            for row in rows:
                ids = out.setdefault((row["stream"], row["group"]), set())
                assert row["message_id"] not in ids, f"{kind}: {row} reported twice"
                ids.add(row["message_id"])
            if len(rows) < 50:
                return out
            last = rows[-1]
            after = (last["stream"], last["message_id"], last["group"])


def expected_figures(outcome: GroupOutcome) -> dict[str, Any]:
    row: dict[str, Any] = dict(outcome.counts)
    lat = outcome.latencies
    row["latency_count"] = len(lat)
    row["latency_sum"] = math.fsum(lat)
    for name, q in QUANTILES:
        row[name] = nearest_rank(lat, q)
    return row


def assert_figures(got: Figures, want: Mapping[tuple[str, str], GroupOutcome]) -> None:
    """The store's figures equal the oracle's, (stream, group) by (stream, group).

    A (stream, group) the store has no row for must count nothing in the oracle.
    """
    for key in got:
        assert key in want, f"store reports {key} that is not an expected group: {got[key]}"
    problems = []
    for key, outcome in sorted(want.items()):
        exp = expected_figures(outcome)
        if key not in got:
            if not outcome.is_empty():
                problems.append(f"{key}: missing from read_slis, expected {exp}")
            continue
        row = got[key]
        diff = {
            name: (row[name], exp[name])
            for name in (*COUNT_NAMES, "latency_count")
            if row[name] != exp[name]
        }
        if row["latency_sum"] != pytest.approx(exp["latency_sum"], abs=1e-6):
            diff["latency_sum"] = (row["latency_sum"], exp["latency_sum"])
        for name, _ in QUANTILES:
            if not close_to(row[name], exp[name]):
                diff[name] = (row[name], exp[name])
        if diff:
            problems.append(f"{key}: (got, expected) {diff}")
    assert not problems, "\n".join(problems)


def assert_discrepancies(store: Engine, want: Mapping[tuple[str, str], GroupOutcome]) -> None:
    """Every discrepancy report names exactly the oracle's ids."""
    problems = []
    for kind in ID_KINDS:
        got = discrepancy_ids(store, kind)
        expected = {key: o.ids[kind] for key, o in want.items() if o.ids[kind]}
        if got != expected:
            problems.append(f"{kind}: got {got}, expected {expected}")
    assert not problems, "\n".join(problems)


def last_ts(records: Iterable[Record]) -> float:
    return max(r.ts for r in records)
