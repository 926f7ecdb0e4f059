"""An id's records cut over several requests, in any order: the single engine
(in one tick, or ticking at each receipt) and a partition of the Kafka log
(judging message by message) give the same figures, latencies included.

The early verdict (delivered) is given after each request in both, never after
a batch of them: when one group's two ok deliveries of an id come in two
requests, the later `ts` first, the latency observed is the first request's
whichever engine judged, and a produce with an earlier `ts` arriving after the
verdict moves no `t0`. The requests all arrive within `settle`, so every other
verdict waits for the final clock in every engine; what is compared is what the
engines' batching could change."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from msgtally.ingest.intake.writer import write_batch
from msgtally.oracle import Record
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler
from msgtally.reconcile.partitioned.partition import Partition, commit
from msgtally.store.db import open_store, write_tx
from msgtally.store.kafka_log import encode_message, heartbeat
from msgtally.store.tables import partitions, tick_loads
from tests.depth import examples
from tests.harness import T, consume, figures, produce, wipe
from tests.partitioned_support import assert_same, batch_of, slices_sent

CONFIG = ReconcileConfig(deadline=300.0, settle=10.0)
PARTS = 3
FINAL = T + 5000.0  # past every deadline + settle and every `remember`


@st.composite
def _id_records(draw: st.DrawFn, n: int) -> list[Record]:
    """One id's records: produced (maybe twice, the second `ts` maybe earlier, or
    never) and consumed by one or two groups, with `ts` in time or past the
    deadline, any outcome."""
    mid = f"m{n}"
    out: list[Record] = []
    t0 = draw(st.integers(0, 20))
    for k in range(draw(st.integers(0, 2))):
        at = t0 + draw(st.integers(-3, 3)) * k
        out.append(produce("s", mid, at, outcome=draw(st.sampled_from(("ok", "ok", "error"))),
                           attempt=k + 1, record_id=f"{mid}/p{k}"))  # fmt: skip
    for group in draw(st.sets(st.sampled_from(("g1", "g2")), min_size=1)):
        for k in range(draw(st.integers(1, 3))):
            at = t0 + draw(st.sampled_from((1, 2, 3, 5, 8, 299, 301, 400)))
            outcome = draw(st.sampled_from(("ok", "ok", "ok", "error", "dead_letter")))
            out.append(consume("s", mid, group, at, outcome=outcome, attempt=k + 1,
                               record_id=f"{mid}/{group}/{k}"))  # fmt: skip
    return out


@st.composite
def _requests(draw: st.DrawFn) -> list[list[Record]]:
    """Every id's records, shuffled together, cut into requests anywhere."""
    records = [r for n in range(draw(st.integers(1, 5))) for r in draw(_id_records(n))]
    records = draw(st.permutations(records))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(records) - 1)), max_size=6)))
    bounds = [0, *(c for c in cuts if c < len(records)), len(records)]
    return [records[a:b] for a, b in pairwise(bounds) if b > a]


# What the collectors receive, in order: a request at its receipt clock, or
# nothing but the clock (the single engine ticks there, each partition has a beat).
Timeline = list[tuple[float, list[Record] | None]]


def _at_once(requests: list[list[Record]]) -> Timeline:
    """Every request within `settle` of the first: no verdict but the early ones
    before FINAL, in any engine."""
    return [(T + 0.5 * i, request) for i, request in enumerate(requests)]


def _single(store: Engine, timeline: Timeline, *, live: bool) -> Engine:
    """The single engine: ticking at each receipt (`live`), or once at the end."""
    wipe(store)
    with Reconciler(store, CONFIG) as engine:
        for at, request in timeline:
            if request is not None:
                write_batch(store, batch_of(request), received_at=at)
            if live:
                engine.catch_up(at, final=False)
        engine.catch_up(FINAL, final=True)
    return store


def _partitioned(store: Engine, timeline: Timeline) -> Engine:
    """The partitions of the Kafka log, fed the slices the collectors would send
    (new groups announced to every partition), then a heartbeat at FINAL."""
    wipe(store)
    with write_tx(store) as conn:
        for p in range(PARTS):
            conn.execute(partitions.insert().values(part=p, epoch=0, next_offset=0, clock=0.0,
                                                    owner=""))  # fmt: skip
    messages: dict[int, list[bytes]] = {p: [] for p in range(PARTS)}
    known: set[tuple[str, str]] = set()
    for i, (at, request) in enumerate(timeline):
        if request is None:
            for p in range(PARTS):
                messages[p].append(heartbeat(at))
            continue
        for p, body in slices_sent(known, batch_of(request).records, None, PARTS).items():
            messages[p].append(encode_message(f"r{i}", at, body))
    parts = [Partition.take(store, CONFIG, p, "w") for p in range(PARTS)]
    for part in parts:
        log = [*messages[part.part], heartbeat(FINAL)]
        for offset, raw in enumerate(log):
            part.feed(offset, raw, lambda _p, before, log=log: iter(log[:before]))
    assert commit(parts) == []
    return store


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[Engine]]:
    """Three stores, emptied for each example: once, live, partitioned."""
    opened = [open_store(f"sqlite:///{tmp_path / name}.db") for name in ("once", "live", "parts")]
    yield opened
    for store in opened:
        store.dispose()


@settings(
    max_examples=examples(25, 50),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(requests=_requests())
def test_the_figures_do_not_depend_on_how_requests_were_batched(
    stores: list[Engine], requests: list[list[Record]]
) -> None:
    timeline = _at_once(requests)
    once = _single(stores[0], timeline, live=False)
    assert_same(_single(stores[1], timeline, live=True), once)
    assert_same(_partitioned(stores[2], timeline), once)


@settings(
    max_examples=examples(15, 30),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(requests=_requests(), data=st.data())
def test_records_of_forgotten_ids_are_judged_request_by_request_too(
    stores: list[Engine], requests: list[list[Record]], data: st.DataObject
) -> None:
    # The requests after the cut come 2000 s later, past a clock (T + 1000) at
    # which every id before was judged and forgotten: an id kept in the store for
    # its discrepancy is loaded back by the request that names it again, before
    # that request's early verdicts. The live single engine and the partitions
    # tick at the same clocks, so their figures are the same.
    cut = data.draw(st.integers(1, len(requests)))
    timeline: Timeline = [
        *_at_once(requests[:cut]),
        (T + 1000.0, None),
        *((T + 2000.0 + at - T, r) for at, r in _at_once(requests[cut:])),
    ]
    live = _single(stores[1], timeline, live=True)
    with live.connect() as conn:
        event(f"ids loaded back: {bool(conn.execute(select(tick_loads.c.tick)).first())}")
    assert_same(_partitioned(stores[2], timeline), live)


def test_a_later_delivery_received_first_sets_the_latency_in_every_engine(
    stores: list[Engine],
) -> None:
    # g1's delivery at ts +8 comes in the first request, its delivery at ts +2 in
    # the second: m is judged delivered after the first, at latency 8, however
    # the engine batched the two requests; the second is a duplicate.
    timeline = _at_once([
        [produce("s", "m", 0, record_id="p"), consume("s", "m", "g1", 8, record_id="c8")],
        [consume("s", "m", "g1", 2, record_id="c2")],
    ])  # fmt: skip
    once = _single(stores[0], timeline, live=False)
    got = figures(once)[("s", "g1")]
    assert (got["delivered"], got["duplicated"], got["latency_count"]) == (1, 1, 1)
    assert got["latency_sum"] == 8.0
    assert_same(_partitioned(stores[2], timeline), once)
