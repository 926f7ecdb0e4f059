"""Hand-built delivery histories with hand-computed figures, on SQLite and PostgreSQL.

Times are offsets in seconds from harness.T; the default deadline is 300 s
and the settle allowance 10 s, so an id produced at 0 is classified by a
pass at 310 or later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine

from msgtally.ingest.intake.schema import Batch, parse_batch
from msgtally.ingest.intake.writer import write_batch
from msgtally.oracle import COUNT_NAMES, ID_KINDS, Record, nearest_rank, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.read.query import read_discrepancies, read_slis
from tests.harness import (
    QUANTILES,
    T,
    assert_discrepancies,
    assert_figures,
    close_to,
    consume,
    discrepancy_ids,
    figures,
    ingest,
    produce,
    repeats,
    run,
)

DEFAULT = ReconcileConfig()
# Late records after a verdict, not forgetting, are what some tests look at.
REMEMBERING = ReconcileConfig(remember=3600)


def counts(**given: int) -> dict[str, int]:
    out = dict.fromkeys(COUNT_NAMES, 0)
    for name in given:
        assert name in out, name
    out.update(given)
    return out


def assert_row(
    store: Engine, stream: str, group: str, latencies: Sequence[float] = (), **given: int
) -> None:
    """The figures of one (stream, group): the counts given (others 0) and the latencies."""
    got = figures(store).get((stream, group))
    assert got is not None, f"no figures for {(stream, group)}"
    assert {n: got[n] for n in COUNT_NAMES} == counts(**given)
    lat = sorted(latencies)
    assert got["latency_count"] == len(lat)
    assert got["latency_sum"] == pytest.approx(sum(lat), abs=1e-6)
    for name, q in QUANTILES:
        want = nearest_rank(lat, q)
        assert close_to(got[name], want), (name, got[name], want)


def assert_nothing_counted(store: Engine, stream: str, group: str) -> None:
    got = figures(store).get((stream, group))
    if got is not None:
        assert {n: got[n] for n in COUNT_NAMES} == counts()
        assert got["latency_count"] == 0


def ids(store: Engine, kind: str, stream: str, group: str) -> set[str]:
    with store.connect() as conn:
        rows = read_discrepancies(conn, kind=kind, stream=stream, group=group)
    assert all(r["stream"] == stream and r["group"] == group for r in rows)
    return {r["message_id"] for r in rows}


def one_shot(store: Engine, records: list[Record], config: ReconcileConfig = DEFAULT) -> None:
    """Ingest everything, then one pass past every deadline + settle, and check the oracle."""
    ingest(store, records)
    longest = max([config.deadline, *config.stream_deadlines.values()])
    run(store, config, max(r.ts for r in records) - T + longest + config.settle + 1)
    want = oracle(
        records,
        deadline=config.deadline,
        stream_deadlines=config.stream_deadlines,
        expected_groups=config.expected_groups,
    )
    assert_figures(figures(store), want)
    assert_discrepancies(store, want)


def snapshot(store: Engine) -> dict[Any, Any]:
    return {"figures": figures(store), **{k: discrepancy_ids(store, k) for k in ID_KINDS}}


# --- several groups, retries, duplicates ------------------------------------------------


def test_several_groups_per_stream(store: Engine) -> None:
    records = [
        produce("orders", "m1", 0),
        consume("orders", "m1", "billing", 1),
        consume("orders", "m1", "shipping", 2),
        consume("orders", "m1", "audit", 3, outcome="error"),
        consume("orders", "m1", "audit", 4, attempt=2),
        produce("orders", "m2", 0),
        consume("orders", "m2", "billing", 400),
        consume("orders", "m2", "audit", 5, outcome="dead_letter"),
        produce("orders", "m3", 0, outcome="error"),
    ]
    one_shot(store, records)
    assert_row(store, "orders", "billing", [1, 400],
               produced=2, delivered=1, lost=1, late=1, attempts=2)
    assert_row(store, "orders", "shipping", [2], produced=2, delivered=1, lost=1, attempts=1)
    assert_row(store, "orders", "audit", [4], produced=2, delivered=1, lost=1, retried=1,
               attempts=3, dead_lettered=1, consume_errors=1)
    assert set(figures(store)) == {("orders", g) for g in ("billing", "shipping", "audit")}


def test_retries_are_not_duplicates(store: Engine) -> None:
    records = [
        # producer retried: the first send is indeterminate, the second acknowledged
        produce("orders", "m1", 0, outcome="error"),
        produce("orders", "m1", 1, attempt=2),
        # consumer failed twice, then processed it: three attempts, one delivery
        consume("orders", "m1", "billing", 2, outcome="error"),
        consume("orders", "m1", "billing", 3, outcome="error", attempt=2),
        consume("orders", "m1", "billing", 4, attempt=3),
        # a re-read after a restart: same attempt, a duplicate and not a retry
        produce("orders", "m2", 0),
        consume("orders", "m2", "billing", 1),
        consume("orders", "m2", "billing", 2),
    ]
    one_shot(store, records)
    assert_row(store, "orders", "billing", [4, 1], produced=2, delivered=2, duplicated=1,
               retried=1, attempts=5, consume_errors=2)
    with store.connect() as conn:
        (sli,) = read_slis(conn)
    assert sli.ratios() == {
        "delivery_success_ratio": 1.0,
        "loss_ratio": 0.0,
        "duplicate_ratio": pytest.approx(1 / 3),
        "retry_ratio": 0.5,
    }
    assert ids(store, "duplicated", "orders", "billing") == {"m2"}


def test_indeterminate_produce_later_consumed_is_recovered(store: Engine) -> None:
    records = [
        produce("orders", "m1", 0, outcome="error"),
        produce("orders", "m1", 1, outcome="error", attempt=2),
        consume("orders", "m1", "billing", 5),
        consume("orders", "m1", "billing", 6),
        # indeterminate and never consumed: counts nothing but its group's presence
        produce("orders", "m2", 0, outcome="error"),
        # indeterminate, then dead-lettered: not produced, so not dead_lettered
        produce("orders", "m3", 0, outcome="error"),
        consume("orders", "m3", "billing", 2, outcome="dead_letter"),
    ]
    one_shot(store, records)
    # no latency: a recovered id was never acknowledged as produced
    assert_row(store, "orders", "billing", [], recovered=1, duplicated=1, retried=1,
               attempts=3)
    assert ids(store, "recovered", "orders", "billing") == {"m1"}
    assert ids(store, "dead_lettered", "orders", "billing") == set()
    with store.connect() as conn:
        (sli,) = read_slis(conn)
    # nothing produced: no ratio over produced (None, not NaN); 1 duplicate of 2 ok deliveries
    assert sli.ratios() == {
        "delivery_success_ratio": None,
        "loss_ratio": None,
        "duplicate_ratio": 0.5,
        "retry_ratio": None,
    }


# --- order of arrival ------------------------------------------------------------------


def test_consume_before_produce_arrives(store: Engine) -> None:
    ingest(store, [consume("orders", "m1", "billing", 1)])
    run(store, DEFAULT, 100)  # not due: the consume alone would be unexpected at 311
    assert_nothing_counted(store, "orders", "billing")
    ingest(store, [produce("orders", "m1", 0)])
    run(store, DEFAULT, 320)
    assert_row(store, "orders", "billing", [1], produced=1, delivered=1, attempts=1)
    assert ids(store, "unexpected", "orders", "billing") == set()


def test_consume_timestamped_before_its_produce(store: Engine) -> None:
    """Clock skew: the consumer's clock is behind; latency is negative, as defined."""
    records = [produce("orders", "m1", 10), consume("orders", "m1", "billing", 9.5)]
    one_shot(store, records)
    assert_row(store, "orders", "billing", [-0.5], produced=1, delivered=1, attempts=1)


def test_records_after_the_deadline_make_the_id_late(store: Engine) -> None:
    records = [
        produce("orders", "m1", 0),
        consume("orders", "m1", "billing", 300.5, outcome="error"),
        consume("orders", "m1", "billing", 350),
        consume("orders", "m1", "billing", 360),
        produce("orders", "m2", 0),
        consume("orders", "m2", "billing", 300),  # at the deadline: delivered
    ]
    one_shot(store, records)
    assert_row(store, "orders", "billing", [350, 300], produced=2, delivered=1, lost=1,
               late=1, duplicated=1, attempts=4, consume_errors=1)
    assert ids(store, "late", "orders", "billing") == {"m1"}
    assert ids(store, "lost", "orders", "billing") == {"m1"}


def test_same_id_on_two_streams_is_two_messages(store: Engine) -> None:
    records = [
        produce("orders", "m1", 0),
        consume("orders", "m1", "billing", 1),
        produce("audit", "m1", 0),
        consume("audit", "m1", "billing", 400),
        produce("audit", "m2", 0),
        consume("audit", "m2", "siem", 2),
    ]
    one_shot(store, records)
    assert_row(store, "orders", "billing", [1], produced=1, delivered=1, attempts=1)
    assert_row(store, "audit", "billing", [400], produced=2, lost=2, late=1, attempts=1)
    assert_row(store, "audit", "siem", [2], produced=2, delivered=1, lost=1, attempts=1)
    assert set(figures(store)) == {("orders", "billing"), ("audit", "billing"),
                                    ("audit", "siem")}
    assert ids(store, "lost", "audit", "billing") == {"m1", "m2"}
    assert ids(store, "lost", "orders", "billing") == set()


# --- expected groups -------------------------------------------------------------------


def test_group_appearing_after_history_was_classified_is_back_filled(store: Engine) -> None:
    ingest(store, [
        produce("orders", "m1", 0),
        produce("orders", "m2", 0),
        consume("orders", "m1", "billing", 1),
        consume("orders", "m2", "billing", 2),
    ])
    run(store, DEFAULT, 400)
    assert_row(store, "orders", "billing", [1, 2], produced=2, delivered=2, attempts=2)

    ingest(store, [produce("orders", "m3", 500), consume("orders", "m3", "shipping", 501)])
    run(store, DEFAULT, 1000)
    # shipping expects every produced id of the stream, the old ones included
    assert_row(store, "orders", "shipping", [1], produced=3, delivered=1, lost=2, attempts=1)
    assert_row(store, "orders", "billing", [1, 2], produced=3, delivered=2, lost=1,
               attempts=2)
    assert ids(store, "lost", "orders", "shipping") == {"m1", "m2"}
    assert ids(store, "lost", "orders", "billing") == {"m3"}

    # shipping then consumes an old id: late, its latency observed now
    ingest(store, [consume("orders", "m1", "shipping", 1100)])
    run(store, DEFAULT, 1200)
    assert_row(store, "orders", "shipping", [1, 1100], produced=3, delivered=1, lost=2,
               late=1, attempts=2)


def test_back_fill_of_a_stream_with_no_group_yet(store: Engine) -> None:
    """Ids classified while no group consumed the stream count once a group appears."""
    ingest(store, [produce("orders", "m1", 0), produce("orders", "m2", 0, outcome="error")])
    run(store, DEFAULT, 400)
    assert figures(store) == {}
    ingest(store, [produce("orders", "m3", 500), consume("orders", "m3", "billing", 501)])
    run(store, DEFAULT, 1000)
    assert_row(store, "orders", "billing", [1], produced=2, delivered=1, lost=1, attempts=1)
    assert ids(store, "lost", "orders", "billing") == {"m1"}


def test_configured_group_that_never_consumes(store: Engine) -> None:
    config = ReconcileConfig(expected_groups={"orders": ("archive",)})
    records = [
        produce("orders", "m1", 0),
        produce("orders", "m2", 0),
        produce("orders", "m3", 0, outcome="error"),
        consume("orders", "m1", "billing", 1),
    ]
    one_shot(store, records, config)
    assert_row(store, "orders", "archive", [], produced=2, lost=2)
    assert_row(store, "orders", "billing", [1], produced=2, delivered=1, lost=1, attempts=1)
    assert ids(store, "lost", "orders", "archive") == {"m1", "m2"}


def test_group_configured_after_history_was_classified(store: Engine) -> None:
    ingest(store, [produce("orders", "m1", 0), consume("orders", "m1", "billing", 1)])
    run(store, DEFAULT, 400)
    assert set(figures(store)) == {("orders", "billing")}
    run(store, ReconcileConfig(expected_groups={"orders": ("archive",)}), 500)
    assert_row(store, "orders", "archive", [], produced=1, lost=1)
    assert_row(store, "orders", "billing", [1], produced=1, delivered=1, attempts=1)


# --- after classification: records only add (rule 3) -----------------------------------


def test_late_arrivals_after_classification(store: Engine) -> None:
    ingest(store, [
        produce("s", "a", 0), consume("s", "a", "g", 1),                 # delivered
        produce("s", "b", 0),                                            # lost
        produce("s", "c", 0, outcome="error"),                           # indeterminate
        produce("s", "d", 0), consume("s", "d", "g", 2, outcome="error"),  # lost, 1 attempt
        consume("s", "e", "g", 0),                                       # unexpected
        produce("s", "f", 0, outcome="error"), consume("s", "f", "g", 3),  # recovered
    ])
    run(store, REMEMBERING, 400)
    before = dict(produced=3, delivered=1, lost=2, recovered=1, unexpected=1, attempts=3,
                  consume_errors=1)
    assert_row(store, "s", "g", [1], **before)
    assert ids(store, "lost", "s", "g") == {"b", "d"}
    snap = figures(store)[("s", "g")]

    ingest(store, [
        consume("s", "a", "g", 500, attempt=2),             # duplicate and retry
        consume("s", "b", "g", 450),                        # late; latency 450 observed now
        consume("s", "c", "g", 460),                        # indeterminate -> recovered
        consume("s", "d", "g", 470, outcome="dead_letter", attempt=2),  # dead-lettered, retry
        produce("s", "e", 480),                             # too late to change the class
        produce("s", "f", 490),                             # too late to make it produced
    ])
    run(store, REMEMBERING, 600)
    assert_row(store, "s", "g", [1, 450], produced=3, delivered=1, lost=2, late=1,
               recovered=2, unexpected=1, duplicated=1, retried=2, attempts=7,
               dead_lettered=1, consume_errors=1)
    after = figures(store)[("s", "g")]
    for name in (*COUNT_NAMES, "latency_count"):
        assert after[name] >= snap[name], name  # counters never go down
    assert ids(store, "late", "s", "g") == {"b"}
    assert ids(store, "lost", "s", "g") == {"b", "d"}
    assert ids(store, "recovered", "s", "g") == {"c", "f"}
    assert ids(store, "unexpected", "s", "g") == {"e"}
    assert ids(store, "dead_lettered", "s", "g") == {"d"}
    assert ids(store, "duplicated", "s", "g") == {"a"}

    # a second late ok consume of the late id: one more duplicate, latency unchanged
    ingest(store, [consume("s", "b", "g", 700), consume("s", "c", "g", 710, outcome="error")])
    run(store, REMEMBERING, 800)
    assert_row(store, "s", "g", [1, 450], produced=3, delivered=1, lost=2, late=1,
               recovered=2, unexpected=1, duplicated=2, retried=2, attempts=9,
               dead_lettered=1, consume_errors=2)


def test_late_produce_retry_after_classification_sets_retried(store: Engine) -> None:
    ingest(store, [produce("s", "a", 0), consume("s", "a", "g", 1)])
    run(store, REMEMBERING, 400)
    assert_row(store, "s", "g", [1], produced=1, delivered=1, attempts=1)
    ingest(store, [produce("s", "a", 420, attempt=2)])
    run(store, REMEMBERING, 500)
    assert_row(store, "s", "g", [1], produced=1, delivered=1, retried=1, attempts=1)


def test_classification_waits_for_deadline_plus_settle(store: Engine) -> None:
    ingest(store, [
        produce("s", "p", 0),
        consume("s", "ghost", "g", 100),  # never produced: counts from the first consume
        consume("s", "ghost", "g", 200),
    ])
    run(store, DEFAULT, 309)
    assert_nothing_counted(store, "s", "g")
    run(store, DEFAULT, 310)
    assert_row(store, "s", "g", [], produced=1, lost=1)
    run(store, DEFAULT, 409)
    assert_row(store, "s", "g", [], produced=1, lost=1)
    run(store, DEFAULT, 410)
    assert_row(store, "s", "g", [], produced=1, lost=1, unexpected=1)
    assert ids(store, "unexpected", "s", "g") == {"ghost"}


def test_unexpected_deadline_counts_per_group(store: Engine) -> None:
    ingest(store, [consume("s", "ghost", "g1", 0), consume("s", "ghost", "g2", 200)])
    run(store, DEFAULT, 310)
    assert_row(store, "s", "g1", [], unexpected=1)
    assert_nothing_counted(store, "s", "g2")
    run(store, DEFAULT, 510)
    assert_row(store, "s", "g2", [], unexpected=1)


def test_settle_zero_classifies_at_the_deadline(store: Engine) -> None:
    config = ReconcileConfig(settle=0)
    ingest(store, [produce("s", "p", 0), consume("s", "q", "g", 0)])
    run(store, config, 299.5)
    assert_nothing_counted(store, "s", "g")
    run(store, config, 300)
    assert_row(store, "s", "g", [], produced=1, lost=1, unexpected=1)


def test_per_stream_deadlines(store: Engine) -> None:
    config = ReconcileConfig(stream_deadlines={"fast": 60})
    ingest(store, [
        produce("fast", "m1", 0), consume("fast", "m1", "g", 60),
        produce("fast", "m2", 0), consume("fast", "m2", "g", 61),
        consume("fast", "ghost", "g", 10),
        produce("slow", "m1", 0), consume("slow", "m1", "g", 61),
        produce("slow", "m2", 0), consume("slow", "m2", "g", 299),
    ])
    run(store, config, 69)
    # delivered in time: counted at once, each stream by its own deadline
    assert_row(store, "fast", "g", [60], produced=1, delivered=1, attempts=1)
    assert_row(store, "slow", "g", [61, 299], produced=2, delivered=2, attempts=2)
    run(store, config, 70)  # fast/m2's deadline (60) + settle (10)
    assert_row(store, "fast", "g", [60, 61], produced=2, delivered=1, lost=1, late=1,
               attempts=2)
    run(store, config, 80)
    assert_row(store, "fast", "g", [60, 61], produced=2, delivered=1, lost=1, late=1,
               attempts=2, unexpected=1)
    run(store, config, 310)
    assert_row(store, "slow", "g", [61, 299], produced=2, delivered=2, attempts=2)
    assert ids(store, "late", "fast", "g") == {"m2"}


# --- ingest idempotence ----------------------------------------------------------------


def test_idempotent_reingest(store: Engine) -> None:
    batch = [
        produce("s", "m1", 0, record_id="p-1"),
        consume("s", "m1", "g", 1, record_id="c-1"),
        consume("s", "m1", "g", 2, outcome="error"),
        produce("s", "m2", 0),
        consume("s", "m2", "g", 3),
    ]
    assert ingest(store, batch) == 5
    assert ingest(store, batch) == 5
    run(store, DEFAULT, 100)  # both ids delivered at once, not forgotten before 310
    expected = dict(produced=2, delivered=2, attempts=3, consume_errors=1)
    assert_row(store, "s", "g", [1, 3], **expected)
    assert repeats(store) == 5
    # resent after the verdict, before deadline + settle: still counted once
    ingest(store, batch)
    run(store, DEFAULT, 400)
    assert_row(store, "s", "g", [1, 3], **expected)
    assert repeats(store) == 10


def test_same_record_id_is_one_record_even_if_fields_differ(store: Engine) -> None:
    first = consume("s", "m1", "g", 1, record_id="c-1")
    resent = consume("s", "m1", "g", 5, record_id="c-1")
    ingest(store, [produce("s", "m1", 0), first])
    ingest(store, [resent])
    run(store, DEFAULT, 400)
    assert repeats(store) == 1
    assert_row(store, "s", "g", [1], produced=1, delivered=1, attempts=1)


def test_identical_records_without_record_id_are_one_within_a_batch(store: Engine) -> None:
    c = consume("s", "m1", "g", 1)
    ingest(store, [produce("s", "m1", 0), c, c])
    run(store, DEFAULT, 400)
    assert repeats(store) == 1
    assert_row(store, "s", "g", [1], produced=1, delivered=1, attempts=1)


def test_consumes_differing_only_in_ts_are_two_deliveries(store: Engine) -> None:
    records = [
        produce("s", "m1", 0),
        consume("s", "m1", "g", 1),
        consume("s", "m1", "g", 1.25),
        consume("s", "m1", "g", 2, outcome="error"),
        consume("s", "m1", "g", 2.5, outcome="error"),
    ]
    ingest(store, records)
    run(store, DEFAULT, 400)
    assert repeats(store) == 0
    assert_row(store, "s", "g", [1], produced=1, delivered=1, duplicated=1, attempts=4,
               consume_errors=2)


def test_same_record_sent_as_json_int_or_float_ts_is_one(store: Engine) -> None:
    wire = {"stream": "s", "kind": "consume", "message_id": "m1", "group": "g",
            "ts": int(T) + 1, "producer": "p1", "seq": 7}
    first = {"stream": "s", "kind": "produce", "message_id": "m1", "ts": T}
    write_batch(store, Batch(parse_batch([first, wire]), [], None))
    write_batch(store, Batch(parse_batch([{**wire, "ts": float(wire["ts"])}]), [], None))
    run(store, DEFAULT, 400)
    assert repeats(store) == 1
    assert_row(store, "s", "g", [1], produced=1, delivered=1, attempts=1)


def test_records_differing_in_one_optional_field_are_two(store: Engine) -> None:
    base = consume("s", "m1", "g", 1)
    other = base._replace(producer="p2")
    ingest(store, [produce("s", "m1", 0), base, other])
    run(store, DEFAULT, 400)
    assert repeats(store) == 0
    assert_row(store, "s", "g", [1], produced=1, delivered=1, duplicated=1, attempts=2)


def test_records_differing_only_in_producer_none_or_text_none_are_two(store: Engine) -> None:
    """Without record_id, records are the same only when every field is equal:
    an absent producer and a producer named "None" are different fields."""
    absent = consume("s", "m1", "g", 1)
    named = absent._replace(producer="None")
    ingest(store, [produce("s", "m1", 0), absent, named])
    run(store, DEFAULT, 400)
    assert repeats(store) == 0
    assert_row(store, "s", "g", [1], produced=1, delivered=1, duplicated=1, attempts=2)


def test_separator_characters_in_names_do_not_merge_records(store: Engine) -> None:
    """Two records with different groups and producers are two records, whatever
    characters the names hold (the contract allows any non-empty string)."""
    a = consume("s", "m1", "g\x1f1700000001.0\x1f1\x1fok\x1fP", 1)._replace(producer="Q")
    b = consume("s", "m1", "g", 1)._replace(producer="P\x1f1700000001.0\x1f1\x1fok\x1fQ")
    assert a != b
    ingest(store, [produce("s", "m1", 0), a, b])
    run(store, DEFAULT, 400)
    assert repeats(store) == 0


def test_ids_and_names_are_opaque_strings(store: Engine) -> None:
    long_id = "x" * 256
    records = [
        produce("örders/ü", "M1", 0), consume("örders/ü", "M1", "grp ✓", 1),
        produce("örders/ü", "m1", 0),                        # case matters: another id
        produce("örders/ü", "m1 ", 0), consume("örders/ü", "m1 ", "grp ✓", 2),
        produce("örders/ü", long_id, 0, record_id="r" * 256),
        consume("örders/ü", long_id, "grp ✓", 3, record_id="c" * 256),
        consume("örders/ü", "'; DROP TABLE records; --", "grp ✓", 4),
    ]
    one_shot(store, records)
    assert_row(store, "örders/ü", "grp ✓", [1, 2, 3], produced=4, delivered=3, lost=1,
               unexpected=1, attempts=3)
    assert ids(store, "lost", "örders/ü", "grp ✓") == {"m1"}
    assert ids(store, "unexpected", "örders/ü", "grp ✓") == {"'; DROP TABLE records; --"}


# --- the reconciliation report -----------------------------------------------------------


def test_discrepancy_report_names_exactly_the_ids(store: Engine) -> None:
    config = ReconcileConfig(expected_groups={"pay": ("ledger",)})
    records = [
        produce("orders", "o1", 0), consume("orders", "o1", "billing", 1),
        produce("orders", "o2", 0),                                              # lost
        produce("orders", "o3", 0), consume("orders", "o3", "billing", 2),
        consume("orders", "o3", "billing", 3),                                   # duplicated
        consume("orders", "o4", "billing", 4),                                   # unexpected
        produce("orders", "o5", 0),
        consume("orders", "o5", "billing", 5, outcome="dead_letter"),          # dead, lost
        produce("orders", "o6", 0), consume("orders", "o6", "billing", 500),   # lost, late
        consume("orders", "o6", "billing", 501),                                 # duplicated
        produce("orders", "o7", 0, outcome="error"),
        consume("orders", "o7", "billing", 7),                                   # recovered
        consume("orders", "o7", "billing", 8),                                   # duplicated
        produce("pay", "o1", 0), consume("pay", "o1", "billing", 1),
        produce("pay", "o2", 0), consume("pay", "o2", "billing", 2),
    ]
    one_shot(store, records, config)
    assert ids(store, "lost", "orders", "billing") == {"o2", "o5", "o6"}
    assert ids(store, "late", "orders", "billing") == {"o6"}
    assert ids(store, "duplicated", "orders", "billing") == {"o3", "o6", "o7"}
    assert ids(store, "unexpected", "orders", "billing") == {"o4"}
    assert ids(store, "dead_lettered", "orders", "billing") == {"o5"}
    assert ids(store, "recovered", "orders", "billing") == {"o7"}
    assert ids(store, "lost", "pay", "billing") == set()
    assert ids(store, "lost", "pay", "ledger") == {"o1", "o2"}
    with store.connect() as conn:
        every_lost = read_discrepancies(conn, kind="lost")
        billing_lost = read_discrepancies(conn, kind="lost", group="billing")
        orders_dups = read_discrepancies(conn, kind="duplicated", stream="orders")
        first_two = read_discrepancies(conn, kind="lost", limit=2)
        rest = read_discrepancies(
            conn, kind="lost",
            after=(first_two[-1]["stream"], first_two[-1]["message_id"], first_two[-1]["group"]),
        )
    assert {(r["stream"], r["group"], r["message_id"]) for r in every_lost} == {
        ("orders", "billing", "o2"), ("orders", "billing", "o5"), ("orders", "billing", "o6"),
        ("pay", "ledger", "o1"), ("pay", "ledger", "o2"),
    }
    assert {r["message_id"] for r in billing_lost} == {"o2", "o5", "o6"}
    by_id = {r["message_id"]: r for r in orders_dups}
    assert {m: r["duplicates"] for m, r in by_id.items()} == {"o3": 1, "o6": 1, "o7": 1}
    assert [r["message_id"] for r in first_two + rest] == [
        r["message_id"] for r in every_lost
    ]
    with store.connect() as conn, pytest.raises(ValueError):
        read_discrepancies(conn, kind="nonsense")


# --- a pass with nothing new ------------------------------------------------------------


def test_reconcile_with_nothing_new_is_a_no_op(store: Engine) -> None:
    config = ReconcileConfig(expected_groups={"orders": ("archive",)})
    records = [
        produce("orders", "m1", 0), consume("orders", "m1", "billing", 1),
        consume("orders", "m1", "billing", 2, outcome="error"),
        produce("orders", "m2", 0), consume("orders", "m2", "billing", 400),
        consume("orders", "ghost", "billing", 3),
        produce("orders", "m3", 0, outcome="error"),
    ]
    one_shot(store, records, config)
    first = snapshot(store)
    for at in (1000, 1000, 5000, 10**6):
        run(store, config, at)
        assert snapshot(store) == first


def test_consume_errors_are_counted_once_when_later_batches_arrive(store: Engine) -> None:
    """A batch ingested after the inbox was drained must not re-count old records."""
    ingest(store, [produce("s", "m1", 0), consume("s", "m1", "g", 1, outcome="error")])
    run(store, DEFAULT, 400)
    assert_row(store, "s", "g", [], produced=1, lost=1, attempts=1, consume_errors=1)
    ingest(store, [produce("s", "m2", 500)])
    run(store, DEFAULT, 1000)
    assert_row(store, "s", "g", [], produced=2, lost=2, attempts=1, consume_errors=1)
