"""Measurement loss found from the senders' numbering, on SQLite and PostgreSQL.

Shim instances number their records from 1 per (producer, stream, kind,
group); records that never reach the collector leave holes, found in the
middle when a later record comes, at the tail when a high-water mark does.
Histories here remove records from several instances' sequences and check
every figure exactly: the tallies of what arrived (the oracle), the records
missing, and the bounds on the lost and unexpected figures they inflate.
Times are offsets from harness.T.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert, select

from msgtally.app import create_app
from msgtally.ingest.intake.schema import parse_batch
from msgtally.ingest.shim.tally import Tally
from msgtally.ingest.shim.wire import record_to_json
from msgtally.oracle import Mark, Record, missing_records, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler
from msgtally.server import BackgroundServer, free_port
from msgtally.slis.read.query import read_slis
from msgtally.store.tables import log, log_pending
from tests.conftest import LiveCollector
from tests.depth import examples
from tests.harness import (
    T,
    assert_discrepancies,
    assert_figures,
    consume,
    figures,
    in_time_order_across,
    ingest,
    missing,
    produce,
    run,
    wipe,
)
from tests.test_shipper import Front

DEFAULT = ReconcileConfig()


class Sender:
    """A shim instance: it numbers its records per (stream, kind, group) from 1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last: dict[tuple[str, str, str], int] = {}

    def __call__(self, record: Record) -> Record:
        key = (record.stream, record.kind, record.group)
        self.last[key] = self.last.get(key, 0) + 1
        return record._replace(producer=self.name, seq=self.last[key])

    def marks(self) -> list[Mark]:
        """Its high-water marks: how far it numbered each sequence."""
        return [Mark(self.name, s, k, n, g) for (s, k, g), n in self.last.items()]


def inflation(store: Engine) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """(produce missing, consume missing, lost bound, unexpected bound) per (stream, group)."""
    with store.connect() as conn:
        slis = read_slis(conn)
    out = {}
    for s in slis:
        bounds = s.inflation()
        out[(s.stream, s.group)] = (
            s.produce_records_missing,
            s.consume_records_missing,
            bounds["lost_inflated_by_at_most"],
            bounds["unexpected_inflated_by_at_most"],
        )
    return out


# --- a history with holes in several instances' sequences --------------------------------


def several_instances() -> tuple[list[list[Record]], list[Mark], list[Record]]:
    """Bodies as the collector receives them, the tail marks, and the records of
    a sender that does not number per sequence (logged apart)."""
    p1, p2, c1, c2 = Sender("p1"), Sender("p2"), Sender("c1"), Sender("c2")
    orders = {f"o{i}": float(i) for i in range(1, 15)}
    made: dict[tuple[str, int], Record] = {}

    def note(sender: Sender, r: Record) -> None:
        numbered = sender(r)
        assert numbered.seq is not None
        made[(f"{sender.name}/{r.stream}/{r.kind}", numbered.seq)] = numbered

    for mid in ("o1", "o2", "o3", "o4", "o5", "o6", "o13", "o14"):  # p1: seqs 1-8
        note(p1, produce("orders", mid, orders[mid]))
    for mid in ("o7", "o8", "o9", "o10", "o11", "o12"):  # p2: seqs 1-6
        note(p2, produce("orders", mid, orders[mid]))
    for mid in ("o1", "o2", "o3", "o4", "o5", "o6"):  # c1: seqs 1-6
        note(c1, consume("orders", mid, "billing", orders[mid] + 1))
    for mid in ("o7", "o8", "o9", "o10", "o11"):  # c2: seqs 1-5; o12 is really lost
        note(c2, consume("orders", mid, "billing", orders[mid] + 1))
    for i in (1, 2, 3):  # a second sequence of p1 and of c1
        note(p1, produce("audit", f"a{i}", i))
        note(c1, consume("audit", f"a{i}", "siem", i + 2))
    removed = {
        ("p1/orders/produce", 3),  # the middle: o3 looks unexpected
        ("p2/orders/produce", 5),  # the tail (found by p2's mark): o11 vanishes,
        ("p2/orders/produce", 6),  # o12 (really lost) is not seen at all
        ("c1/orders/consume", 2),  # the middle: o2 looks lost
        ("c2/orders/consume", 4),  # the tail (found by c2's mark): o10 looks lost
        ("c2/orders/consume", 5),
        ("c1/audit/consume", 1),  # the head: a1 looks lost
    }
    kept = [r for key, r in made.items() if key not in removed]
    resent = next(r for r in kept if r.producer == "c1" and r.seq == 4)  # a shim's resend
    bodies = [kept[0:5], [*kept[5:11], resent], kept[11:]]
    bodies = [list(reversed(bodies[1])), bodies[2], bodies[0]]  # out of order in flight
    tail = [m for m in p2.marks() + c2.marks() if m.stream == "orders"]
    legacy = [  # an older shim: one counter for everything, not checked
        produce("orders", "o20", 1)._replace(producer="old", seq=1),
        produce("orders", "o21", 1)._replace(producer="old", seq=5),
        consume("orders", "o20", "billing", 2),
        consume("orders", "o21", "billing", 2),
    ]
    return bodies, tail, legacy


def test_holes_in_several_instances_in_the_middle_and_at_the_tail(store: Engine) -> None:
    bodies, tail, legacy = several_instances()
    for body in bodies:
        ingest(store, body, sequences=[])
    ingest(store, legacy)  # no sequences: its seqs (1, 5) are not checked
    ingest(store, [], sequences=tail)  # a high-water report on its own: the tails
    run(store, DEFAULT, 1000)

    records = [r for body in bodies for r in body]
    want = oracle(records + legacy)
    assert_figures(figures(store), want)
    assert_discrepancies(store, want)
    assert missing(store) == missing_records(records, tail) == {
        ("orders", "produce", ""): 3,
        ("orders", "consume", "billing"): 3,
        ("audit", "consume", "siem"): 1,
    }
    billing = figures(store)[("orders", "billing")]
    # o2, o10: consumed, their consume records missing; o13, o14: really lost.
    assert (billing["produced"], billing["delivered"], billing["lost"]) == (13, 9, 4)
    assert billing["unexpected"] == 1  # o3: produced, its produce record missing
    assert figures(store)[("audit", "siem")]["lost"] == 1
    assert inflation(store) == {
        ("orders", "billing"): (3, 3, 3, 1),
        ("audit", "siem"): (0, 1, 1, 0),
    }


def test_the_tail_is_not_known_without_a_mark(store: Engine) -> None:
    bodies, tail, _ = several_instances()
    for body in bodies:
        ingest(store, body, sequences=[])
    run(store, DEFAULT, 1000)
    records = [r for body in bodies for r in body]
    assert missing(store) == missing_records(records) == {
        ("orders", "produce", ""): 1,
        ("orders", "consume", "billing"): 1,
        ("audit", "consume", "siem"): 1,
    }
    ingest(store, [], sequences=tail)  # the instances report how far they numbered
    run(store, DEFAULT, 1100)
    assert missing(store) == missing_records(records, tail)


# --- when a hole counts ---------------------------------------------------------------------


def test_a_hole_counts_once_open_for_settle_and_never_goes_down(store: Engine) -> None:
    config = ReconcileConfig(expected_groups={"s": ("g",)})
    p = Sender("p1")
    m = [p(produce("s", f"m{i}", i)) for i in range(1, 7)]  # seqs 1-6
    live = Reconciler(store, config).open()
    ingest(store, [m[0], m[2]], received_at=T + 1, sequences=[])  # 2 is open
    live.tick(T + 5)
    assert missing(store) == {}
    ingest(store, [m[1], m[4]], received_at=T + 8, sequences=[])  # 2 comes 7 s later; 4 open
    live.tick(T + 12)  # past the settle 2 would have had: it came in time
    assert missing(store) == {}
    live.tick(T + 17.5)
    assert missing(store) == {}
    live.tick(T + 18)  # 4 has been open for settle (10 s) since its receipt at 8
    assert missing(store) == {("s", "produce", ""): 1}
    # 4 comes after all: counted in the figures, still missing. A mark says the
    # shim numbered up to 8: 6-8 may still wait in its buffer.
    ingest(store, [m[3]], received_at=T + 20, sequences=[Mark("p1", "s", "produce", 8)])
    live.tick(T + 29)
    assert missing(store) == {("s", "produce", ""): 1}
    live.close(checkpoint=False)  # as kill -9: the next engine replays the ticks
    with Reconciler(store, config) as again:
        again.tick(T + 100)
        assert missing(store) == {("s", "produce", ""): 1}
        ingest(store, [m[5]], received_at=T + 200, sequences=[])  # 6 came; 7, 8 wait
        again.tick(T + 329)
        assert missing(store) == {("s", "produce", ""): 1}
        again.tick(T + 330)  # the deadline (300 s) + settle after the mark
        assert missing(store) == {("s", "produce", ""): 3}
        again.tick(T + 400)
    assert figures(store)[("s", "g")]["produced"] == 6  # m1-m6, the late m4 with them
    assert missing(store) == {("s", "produce", ""): 3}


def test_a_live_shims_backlog_is_not_missing_a_dead_ones_is(store: Engine) -> None:
    """Marks announce records that may wait in a shim's buffer: they are missing
    only if they have not come by the stream's deadline + settle after the mark,
    when the ids they belong to are judged."""
    live_shim, dead_shim = Sender("live"), Sender("dead")
    slow = [live_shim(produce("s", f"a{i}", i)) for i in range(100)]
    gone = [dead_shim(produce("s", f"b{i}", i)) for i in range(100)]
    with Reconciler(store, DEFAULT) as engine_:
        marks = live_shim.marks() + dead_shim.marks()  # both numbered 100
        ingest(store, slow[:10] + gone[:10], received_at=T + 1, sequences=marks)
        engine_.tick(T + 2)
        for i in range(10, 100, 10):  # the live shim's backlog drains for 4.5 minutes
            ingest(store, slow[i : i + 10], received_at=T + 3 * i, sequences=[])
            engine_.tick(T + 3 * i + 1)
        engine_.tick(T + 310)
        assert missing(store) == {}
        engine_.tick(T + 311)  # the dead shim's 90 will never come
        assert missing(store) == {("s", "produce", ""): 90}


def test_a_backlog_is_judged_by_receipt_times_as_it_was_live(store: Engine) -> None:
    """An engine that comes back to an hour of log reads it in order: a hole is
    missing when the record that fills it was received more than settle after
    the one that showed it, however late the engine reads them."""
    p = Sender("p1")
    m = [p(produce("s", f"m{i}", i)) for i in range(1, 6)]
    ingest(store, [m[0], m[2], m[4]], received_at=T + 1, sequences=[])  # 2 and 4 open
    ingest(store, [m[1]], received_at=T + 9, sequences=[])  # within settle
    ingest(store, [m[3]], received_at=T + 12, sequences=[])  # too late
    with Reconciler(store, ReconcileConfig(budget=1)) as live:  # a log row per tick
        for _ in range(4):
            live.tick(T + 3600)
    assert missing(store) == {("s", "produce", ""): 1}


# --- what is not checked, and what is one sequence ----------------------------------------


def test_what_is_checked_and_what_is_one_sequence(store: Engine) -> None:
    records = [
        # one producer, two kinds and two groups: four sequences, each gapless
        produce("s", "a", 0)._replace(producer="x", seq=1),
        consume("s", "a", "g1", 1)._replace(producer="x", seq=1),
        consume("s", "a", "g2", 1)._replace(producer="x", seq=1),
        produce("t", "a", 0)._replace(producer="x", seq=1),
        # seq 0 is never missing; 3 shows that 2 is
        produce("s", "b", 0)._replace(producer="y", seq=0),
        produce("s", "c", 0)._replace(producer="y", seq=1),
        produce("s", "d", 0)._replace(producer="y", seq=3),
        # without a producer, or without a seq: not in a sequence
        produce("s", "e", 0)._replace(seq=9),
        produce("s", "f", 0)._replace(producer="z"),
    ]
    ingest(store, records, sequences=[])
    ingest(store, records, sequences=[])  # resent: each seq counts once
    ingest(store, [], sequences=[Mark("x", "s", "consume", 1, "g1")])  # no news
    ingest(store, [produce("s", "g", 0)._replace(producer="x", seq=7)])  # not checked
    run(store, DEFAULT, 1000)
    assert missing(store) == {("s", "produce", ""): 1}


def test_version_1_log_bodies_are_still_read(store: Engine) -> None:
    """A store written before sequences were checked holds version 1 bodies."""
    records = [
        produce("s", "m1", 0)._replace(producer="p", seq=1),
        produce("s", "m2", 0)._replace(producer="p", seq=5),
        consume("s", "m1", "g", 1),
    ]
    body = msgspec.msgpack.encode((1, parse_batch([record_to_json(r) for r in records])))
    with store.begin() as conn:
        row = conn.execute(insert(log).values(received_at=T, n=3, body=body).returning(log.c.id))
        conn.execute(insert(log_pending).values(id=row.scalar_one(), received_at=T, n=3))
    run(store, DEFAULT, 1000)
    assert_figures(figures(store), oracle(records))
    assert missing(store) == {}
    with store.connect() as conn:
        assert conn.execute(select(log.c.body)).scalar_one() == body


# --- through the collector: /v1/slis, /metrics, report -----------------------------------


def post(url: str, records: Sequence[Record], marks: Sequence[Mark] | None) -> None:
    body: dict[str, object] = {"records": [record_to_json(r) for r in records], "source": "t"}
    if marks is not None:
        body["sequences"] = [m._asdict() for m in marks]
    resp = httpx.post(f"{url}/v1/records", json=body)
    assert resp.status_code == 200, resp.text


def test_through_the_collector(store: Engine, db_url: str) -> None:
    bodies, tail, legacy = several_instances()
    with LiveCollector(store, DEFAULT) as live:
        for body in bodies:
            post(live.url, body, [])
        post(live.url, legacy, None)
        post(live.url, [], tail)
        run(store, DEFAULT, 1000)
        slis = {(r["stream"], r["group"]): r for r in httpx.get(f"{live.url}/v1/slis").json()}
        text = httpx.get(f"{live.url}/metrics").text
    billing = slis[("orders", "billing")]
    assert (billing["produce_records_missing"], billing["consume_records_missing"]) == (3, 3)
    assert (billing["lost"], billing["lost_inflated_by_at_most"]) == (4, 3)
    assert (billing["unexpected"], billing["unexpected_inflated_by_at_most"]) == (1, 1)
    siem = slis[("audit", "siem")]
    assert (siem["produce_records_missing"], siem["consume_records_missing"]) == (0, 1)
    assert (siem["lost"], siem["lost_inflated_by_at_most"]) == (1, 1)
    series = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "msgtally_records_missing_total"
    }
    assert series == {
        (("group", ""), ("kind", "produce"), ("stream", "orders")): 3,
        (("group", "billing"), ("kind", "consume"), ("stream", "orders")): 3,
        (("group", "siem"), ("kind", "consume"), ("stream", "audit")): 1,
    }
    if not db_url.startswith("sqlite"):
        return
    report = [sys.executable, "-m", "msgtally.cli", "report", "--db", db_url]
    rows = json.loads(subprocess.run([*report, "--json"], capture_output=True, check=True,
                                     text=True).stdout)  # fmt: skip
    assert {(r["stream"], r["group"]): r for r in rows} == slis
    table = subprocess.run(report, capture_output=True, check=True, text=True).stdout
    assert "* orders / billing: up to 3 of the lost ids may have been consumed" in table
    assert "* orders / billing: up to 1 of the unexpected ids may have been produced" in table
    assert "* audit / siem: up to 1 of the lost ids may have been consumed" in table


@pytest.mark.parametrize(
    ("mark", "field", "reason"),
    [
        ({"producer": "p", "stream": "s", "kind": "consume", "last": 3},
         "sequences[0].group", "field required for a consume sequence"),
        ({"producer": "p", "stream": "s", "kind": "produce", "last": 3, "group": "g"},
         "sequences[0].group", "only consume sequences carry a group"),
        ({"producer": "p", "stream": "s", "kind": "produce", "last": 2**63},
         "sequences[0].last", "must be at most 9223372036854775807"),
        ({"producer": "p\x00", "stream": "s", "kind": "produce", "last": 1},
         "sequences[0].producer", "contains a NUL character"),
        ({"producer": "p", "stream": "s", "kind": "send", "last": 1},
         "sequences[0].kind", "must be 'produce' or 'consume', got 'send'"),
        ({"stream": "s", "kind": "produce", "last": 1}, "sequences[0].producer", "field required"),
    ],
)  # fmt: skip
def test_a_bad_mark_is_refused_naming_it(
    store: Engine, collector: LiveCollector, mark: dict[str, object], field: str, reason: str
) -> None:
    ok = record_to_json(produce("s", "m", 0))
    resp = httpx.post(f"{collector.url}/v1/records", json={"records": [ok], "sequences": [mark]})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"] == {"field": field, "reason": reason}
    with store.connect() as conn:
        assert conn.execute(select(log.c.id)).first() is None


# --- any history: the oracle ----------------------------------------------------------------


@st.composite
def numbered_histories(
    draw: Callable[..., Any],
) -> tuple[list[list[Record]], list[Mark], list[Record]]:
    """Bodies of records from several senders' sequences, some records never
    sent (anywhere in a sequence), some sent twice, all out of order; the marks
    of some sequences; and every record sent."""
    keys = draw(st.lists(
        st.tuples(st.sampled_from(("p1", "p2")), st.sampled_from(("s1", "s2")),
                  st.sampled_from(("", "g1", "g2"))),
        min_size=1, max_size=5, unique=True,
    ))  # fmt: skip
    sent: list[Record] = []
    marks: list[Mark] = []
    n = 0
    for producer, stream, group in keys:
        kind = "consume" if group else "produce"
        length = draw(st.integers(1, 8))
        for seq in range(1, length + 1):
            n += 1
            mid = f"m{draw(st.integers(0, 4))}"
            at = draw(st.sampled_from((0.0, 1.0, 400.0)))
            record = Record(stream, kind, mid, T + at, group, record_id=f"r{n}",
                            producer=producer, seq=seq)  # fmt: skip
            if draw(st.integers(0, 3)):  # a quarter never reach the collector
                sent.append(record)
        if draw(st.booleans()):
            marks.append(Mark(producer, stream, kind, length, group))
    for _ in range(draw(st.integers(0, 3)) if sent else 0):
        sent.append(draw(st.sampled_from(sent)))  # a resend
    sent = list(draw(st.permutations(sent)))
    cut = sorted(draw(st.lists(st.integers(0, len(sent)), max_size=2)))
    # in any order within a body, each id's in the order of its ts across them
    bodies = in_time_order_across(
        [sent[a:b] for a, b in zip([0, *cut], [*cut, len(sent)], strict=True)]
    )
    return bodies, marks, [r for body in bodies for r in body]


def test_any_history_matches_the_oracle(store: Engine) -> None:
    @settings(
        max_examples=examples(25, 50) if store.dialect.name == "sqlite" else examples(8, 15),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(history=numbered_histories(), marks_in=st.integers(0, 3))
    def check(
        history: tuple[list[list[Record]], list[Mark], list[Record]], marks_in: int
    ) -> None:
        bodies, marks, sent = history
        note(f"bodies {bodies}\nmarks {marks}")
        wipe(store)
        for i, body in enumerate(bodies):
            if body or (i == marks_in and marks):
                ingest(store, body, sequences=marks if i == marks_in else [])
        if marks_in >= len(bodies) and marks:
            ingest(store, [], sequences=marks)  # a high-water report on its own
        run(store, DEFAULT, 2000)
        want = oracle(sent)
        assert_figures(figures(store), want)
        gaps = missing_records(sent, marks)
        assert missing(store) == gaps
        for (stream, group), o in want.items():
            p, c = gaps.get((stream, "produce", ""), 0), gaps.get((stream, "consume", group), 0)
            bounds = (min(o.counts["lost"], c), min(o.counts["unexpected"], p))
            assert inflation(store).get((stream, group), (p, c, 0, 0)) == (p, c, *bounds)

    check()


# --- the shim, end to end -------------------------------------------------------------------


def test_a_shim_buffer_overflow_inflates_lost_and_says_by_how_much(store: Engine) -> None:
    """The consumer's shim overflows while the collector is away: the ids whose
    consume records it dropped look lost, and the collector bounds exactly how
    many of the lost ids that may be."""
    port = free_port()  # nobody listens until the collector comes up below
    url = f"http://127.0.0.1:{port}"
    producer = Tally("orders", url, tracing=False, max_buffer=10_000, flush_interval=0.05)
    consumer = Tally("orders", url, tracing=False, max_buffer=300, batch_size=100,
                     flush_interval=0.05, timeout=1.0)  # fmt: skip
    ids, really_lost = 2000, set(range(0, 2000, 10))
    for i in range(ids):
        producer.produced(f"m{i}")
        if i not in really_lost:
            consumer.consumed(f"m{i}", group="billing")
    dropped = sum(consumer.shipper.dropped.values())
    assert dropped > 1000 and not producer.shipper.dropped
    with BackgroundServer(create_app(store, DEFAULT), port=port):
        assert producer.flush(30) and consumer.flush(30)
        producer.close()
        consumer.close()
    run(store, DEFAULT, 10**9)  # past every deadline
    with store.connect() as conn:
        (sli,) = read_slis(conn)
    assert (sli.produced, sli.delivered) == (ids, ids - len(really_lost) - dropped)
    assert sli.lost == len(really_lost) + dropped  # inflated by every consume dropped
    assert sli.records_dropped == sli.consume_records_missing == dropped
    assert sli.produce_records_missing == 0
    assert sli.inflation()["lost_inflated_by_at_most"] == dropped
    assert sli.lost - sli.inflation()["lost_inflated_by_at_most"] == len(really_lost)


def test_a_shim_that_dies_with_records_in_its_buffer(store: Engine) -> None:
    """The consumer's shim gets one request through, then never another (it
    dies): it never reports a drop, but the mark it sent names the records it
    held, and the ids they would have delivered are bounded as lost."""
    ids = [f"m{i}" for i in range(70)]
    now = time.time() - T
    ingest(store, [produce("orders", mid, now) for mid in ids])  # a producer without trouble
    allow = threading.Event()
    front = Front(
        create_app(store, DEFAULT),
        refuse=lambda n: not allow.is_set() or any(a[1] == 200 for a in front.answers),
    )
    with BackgroundServer(front) as live:  # type: ignore[arg-type]
        shim = Tally("orders", live.url, tracing=False, batch_size=50, flush_interval=3600)
        for mid in ids:
            shim.consumed(mid, group="billing")
        allow.set()  # one request of at most 50 records gets through, with its marks
        deadline = time.monotonic() + 10
        while not any(a[1] == 200 for a in front.answers):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        shim.close(0.2)  # then the shim is gone, and its report with it
    run(store, DEFAULT, 10**9)
    with store.connect() as conn:
        (sli,) = read_slis(conn)
    got = sli.delivered
    assert 1 <= got <= 50
    assert (sli.produced, sli.lost, sli.records_dropped) == (70, 70 - got, 0)
    assert sli.consume_records_missing == 70 - got
    assert sli.inflation()["lost_inflated_by_at_most"] == 70 - got


def test_a_mark_under_a_name_past_the_series_limit_is_left_out(store: Engine) -> None:
    """A mark must not add series the limit refuses; the records keep flowing."""
    with LiveCollector(store, DEFAULT, max_series=1) as live:
        post(live.url, [produce("s", "m1", 0)._replace(producer="p", seq=1)],
             [Mark("p", "s", "produce", 3), Mark("p", "t", "produce", 5)])  # fmt: skip
        run(store, DEFAULT, 1000)
    assert missing(store) == {("s", "produce", ""): 2}

