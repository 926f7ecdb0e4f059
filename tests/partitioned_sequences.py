"""Senders that number their records per sequence, over a history of requests
(tests.partitioned_support.history): the numbering a shim gives, records it
never delivered (holes in the middle and at the tails), the marks it sends,
and the same requests through the single engine for reference."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Engine

from msgtally.ingest.intake.schema import parse_body
from msgtally.ingest.intake.writer import write_batch
from msgtally.ingest.shim.wire import record_to_json
from msgtally.oracle import Mark, Record
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile

Key = tuple[str, str, str, str]  # producer, stream, kind, group


class Numbered(NamedTuple):
    """A request of numbering senders: its records (the undelivered taken out)
    and its marks (how far its senders had numbered when it was sent)."""

    records: list[Record]
    marks: list[Mark]


def key_of(r: Record) -> Key:
    assert r.producer is not None
    return (r.producer, r.stream, r.kind, r.group)


def numbered(
    requests: Sequence[Sequence[Record]], seed: int, lose: float = 0.03, tails: int = 3
) -> tuple[list[Numbered], list[Mark]]:
    """The requests as numbering senders send them, and their final marks (a
    request of marks alone, as a shim's last report).

    Produces come from three instances, each group's consumes from two: each
    numbers its records from 1 per (stream, kind, group) in the order the
    requests are first sent (a resend carries the same numbers). A share
    `lose` of the records never reaches the collector, and so do the last
    records of `tails` sequences: holes in the middle, found by a later
    record, and at the tail, found by a mark."""
    rng = random.Random(seed)
    last: dict[Key, int] = {}
    done: dict[int, list[Record]] = {}  # a resend is the same list: numbered once
    for request in requests:
        if id(request) in done:
            continue
        out = []
        for r in request:
            producer = (
                f"p{rng.randrange(3)}" if r.kind == "produce" else f"{r.group}-{rng.randrange(2)}"
            )
            key = (producer, r.stream, r.kind, r.group)
            last[key] = last.get(key, 0) + 1
            out.append(r._replace(producer=producer, seq=last[key]))
        done[id(request)] = out
    ends = {k: n for k, n in last.items() if n > 2}
    tail_lost = {(k, ends[k] - i) for k in rng.sample(sorted(ends), tails) for i in range(2)}
    lost = {id(r) for rs in done.values() for r in rs if rng.random() < lose}
    sent: list[Numbered] = []
    seen: dict[Key, int] = {}
    for request in requests:
        records = done[id(request)]
        for r in records:
            seen[key_of(r)] = max(seen.get(key_of(r), 0), r.seq or 0)
        kept = [r for r in records if id(r) not in lost and (key_of(r), r.seq) not in tail_lost]
        # the marks: how far the request's senders numbered, the tails' withheld
        named = {key_of(r) for r in records}
        marks = [Mark(p, s, k, _below_tail(seen[(p, s, k, g)], (p, s, k, g), tail_lost), g)
                 for p, s, k, g in sorted(named)]  # fmt: skip
        sent.append(Numbered(kept, [m for m in marks if m.last > 0]))
    final = [Mark(p, s, k, n, g) for (p, s, k, g), n in sorted(last.items())]
    return sent, final


def _below_tail(n: int, key: Key, tail_lost: set[tuple[Key, int]]) -> int:
    """A mark that does not yet show a tail: the tails are the final marks' to find."""
    while (key, n) in tail_lost:
        n -= 1
    return n


def envelope(request: Numbered) -> dict[str, Any]:
    """The request as a shim's JSON body."""
    return {
        "records": [record_to_json(r) for r in request.records],
        "sequences": [m._asdict() for m in request.marks],
    }


def single_engine(
    store: Engine, requests: Sequence[Numbered], config: ReconcileConfig, now: float
) -> None:
    """The same requests through the single engine: the reference."""
    for i, request in enumerate(requests):
        batch = parse_body(json.dumps(envelope(request)).encode())
        write_batch(store, batch, received_at=1000.0 + i)
    reconcile(store, config, now)
