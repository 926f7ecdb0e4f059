"""The engine's own guarantees: crash and replay, receipt-time settle, forgetting,
back-fills from the log, the lease. On SQLite and on PostgreSQL.

Histories are offsets from harness.T; `received_at` is set explicitly where the
receipt time matters, in the same clock as the histories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from msgtally.oracle import ID_KINDS, Mark, Record, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler, reconcile
from msgtally.reconcile.lease import LeaseHeld
from tests.depth import examples
from tests.harness import (
    T,
    assert_discrepancies,
    assert_figures,
    consume,
    discrepancy_ids,
    figures,
    ingest,
    missing,
    produce,
    repeats,
    wipe,
)

DEFAULT = ReconcileConfig()


def snapshot(store: Engine) -> dict[str, Any]:
    return {
        "figures": figures(store),
        "missing": missing(store),
        **{k: discrepancy_ids(store, k) for k in ID_KINDS},
    }


# --- crash and replay ----------------------------------------------------------------------

STREAMS = ("s1", "s2")
GROUPS = ("g1", "g2")


Batches = list[tuple[float, list[Record], list[Mark]]]


@st.composite
def timed_histories(draw: Callable[..., Any]) -> Batches:
    """Batches of records with the time each arrives (offsets from T), in order,
    numbered per sequence by two senders that sometimes skip a number (a record
    never sent), with their high-water marks now and then."""
    at = 0.0
    batches: Batches = []
    n = 0
    last: dict[tuple[str, str, str, str], int] = {}
    for _ in range(draw(st.integers(1, 8))):
        at += draw(st.sampled_from((0.5, 5.0, 100.0, 400.0)))
        batch = []
        for _ in range(draw(st.integers(1, 6))):
            n += 1
            mid = f"m{draw(st.integers(0, 6))}"
            stream = draw(st.sampled_from(STREAMS))
            ts = at - draw(st.sampled_from((0.0, 0.5, 2.0, 350.0)))
            if draw(st.booleans()):
                record = produce(stream, mid, ts, outcome=draw(
                    st.sampled_from(("ok", "ok", "error"))), record_id=f"r{n}")
            else:
                record = consume(stream, mid, draw(st.sampled_from(GROUPS)), ts,
                                 outcome=draw(st.sampled_from(("ok", "ok", "error"))),
                                 record_id=f"r{n}")  # fmt: skip
            key = (draw(st.sampled_from(("p1", "p2"))), stream, record.kind, record.group)
            last[key] = last.get(key, 0) + draw(st.sampled_from((1, 1, 1, 2)))
            batch.append(record._replace(producer=key[0], seq=last[key]))
        if batches and draw(st.booleans()):
            batch += draw(st.sampled_from(batches))[1][:2]  # a shim's resend
        marks = []
        if draw(st.booleans()):  # how far each sender numbered, one more at times
            marks = [Mark(p, s, k, top + draw(st.sampled_from((0, 0, 1))), g)
                     for (p, s, k, g), top in last.items()]  # fmt: skip
        batches.append((at, batch, marks))
    return batches


def _run(
    store: Engine, config: ReconcileConfig, batches: Batches,
    crashes: set[int], checkpoint_every: float,
) -> None:
    """Ingest and tick batch by batch; at each crash point, drop the engine's memory
    without a checkpoint and start a new one from the store."""
    live = Reconciler(store, config, checkpoint_every=checkpoint_every).open()
    for i, (at, batch, marks) in enumerate(batches):
        ingest(store, batch, received_at=T + at, sequences=marks)
        live.tick(T + at)
        if i in crashes:
            live.close(checkpoint=False)  # as kill -9: nothing more is written
            live = Reconciler(store, config, checkpoint_every=checkpoint_every).open()
    live.tick(T + batches[-1][0] + 2000, final=True)
    live.close()


def test_a_crash_at_any_tick_gives_the_figures_of_an_uninterrupted_run(store: Engine) -> None:
    @settings(
        max_examples=examples(20, 40) if store.dialect.name == "sqlite" else examples(8, 15),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        batches=timed_histories(),
        crashes=st.sets(st.integers(0, 7)),
        checkpoint_every=st.sampled_from((0.0, 1e9)),  # after every tick, or never
        remember=st.sampled_from((0.0, 600.0)),
    )
    def check(
        batches: Batches, crashes: set[int], checkpoint_every: float, remember: float
    ) -> None:
        config = ReconcileConfig(remember=remember)
        note(f"crashes after ticks {sorted(crashes)}, checkpoint_every={checkpoint_every}")
        wipe(store)
        _run(store, config, batches, set(), checkpoint_every)
        uninterrupted = snapshot(store)
        wipe(store)
        _run(store, config, batches, crashes, checkpoint_every)
        assert snapshot(store) == uninterrupted

    check()


# --- receipt-time settle -------------------------------------------------------------------


def test_a_backlog_after_an_outage_is_judged_as_it_would_have_been_live(
    store: Engine,
) -> None:
    """Shims send hours of buffered records when the collector comes back: the
    produce and the consume of an id in batches seconds apart, all long past
    their deadlines. Nothing is judged before settle past its first receipt."""
    back = 7200.0  # the collector comes back two hours later
    produces = [produce("s", f"m{i}", i) for i in range(10)]
    consumes = [consume("s", f"m{i}", "g", i + 1) for i in range(8)]  # m8, m9 lost
    with Reconciler(store, DEFAULT) as live:
        ingest(store, produces, received_at=T + back)
        live.tick(T + back + 1)  # the producers' shim first: nothing is judged lost
        assert figures(store).get(("s", "g")) is None
        ingest(store, consumes, received_at=T + back + 4)
        live.tick(T + back + 5)
        live.tick(T + back + 11)  # settle past the first receipt
    want = oracle([*produces, *consumes])
    assert_figures(figures(store), want)
    assert_discrepancies(store, want)
    assert figures(store)[("s", "g")]["lost"] == 2


def test_without_the_receipt_settle_a_backlog_would_be_misjudged(store: Engine) -> None:
    """The same backlog, consumes sent after settle: they come too late, and say so."""
    with Reconciler(store, DEFAULT) as live:
        known = [produce("s", "m0", 0), consume("s", "m0", "g", 1)]  # g receives s
        ingest(store, [*known, produce("s", "m1", 0)], received_at=T + 7200)
        live.tick(T + 7211)
        ingest(store, [consume("s", "m1", "g", 1)], received_at=T + 7215)
        live.tick(T + 7216)
    row = figures(store)[("s", "g")]
    assert (row["produced"], row["lost"], row["late"], row["delivered"]) == (2, 1, 1, 1)


# --- forgetting ----------------------------------------------------------------------------


def test_what_is_forgotten_and_what_is_found_again(store: Engine) -> None:
    config = ReconcileConfig(remember=0)
    ingest(store, [
        produce("s", "lost", 0),
        produce("s", "ok", 0), consume("s", "ok", "g", 1),
    ])  # fmt: skip
    reconcile(store, config, T + 400)  # judged and forgotten: nothing kept in memory
    with Reconciler(store, config) as live:
        assert live.core.stats()["in_memory"] == 0
    # Hours later: the lost id is found in the store, the delivered one is not.
    ingest(store, [consume("s", "lost", "g", 9000), consume("s", "ok", "g", 9001)])
    reconcile(store, config, T + 9500)
    row = figures(store)[("s", "g")]
    assert (row["lost"], row["late"], row["delivered"]) == (1, 1, 1)
    assert (row["unexpected"], row["duplicated"]) == (1, 0)  # "ok" again: a new id
    assert discrepancy_ids(store, "late") == {("s", "g"): {"lost"}}
    assert discrepancy_ids(store, "unexpected") == {("s", "g"): {"ok"}}


def test_a_retried_delivery_is_kept_when_forgotten_and_found_whole(store: Engine) -> None:
    """Retried is no discrepancy, but a retried id's verdicts are kept at eviction,
    so that a late record finds it: its duplicate counts as a duplicate."""
    config = ReconcileConfig(remember=0)
    ingest(store, [
        produce("s", "r", 0), consume("s", "r", "g", 1, outcome="error"),
        consume("s", "r", "g", 2, attempt=2),
    ])  # fmt: skip
    reconcile(store, config, T + 400)
    assert discrepancy_ids(store, "duplicated") == {}  # not in the report
    ingest(store, [consume("s", "r", "g", 9000, attempt=3)])
    reconcile(store, config, T + 9500)
    row = figures(store)[("s", "g")]
    assert (row["delivered"], row["duplicated"], row["retried"], row["attempts"]) == (1, 1, 1, 3)
    assert row["unexpected"] == 0
    assert discrepancy_ids(store, "duplicated") == {("s", "g"): {"r"}}


def test_a_resend_is_recognised_while_the_id_is_remembered(store: Engine) -> None:
    config = ReconcileConfig(remember=600)
    batch = [produce("s", "m1", 0, record_id="p"), consume("s", "m1", "g", 1, record_id="c")]
    with Reconciler(store, config) as live:
        ingest(store, batch, received_at=T + 1)
        live.tick(T + 2)
        ingest(store, batch, received_at=T + 800)  # past deadline + settle, within remember
        live.tick(T + 801)
        assert repeats(store) == 2
    row = figures(store)[("s", "g")]
    assert (row["produced"], row["delivered"], row["attempts"]) == (1, 1, 1)


# --- back-fills ----------------------------------------------------------------------------


def test_a_new_group_is_owed_ids_the_engine_had_forgotten(store: Engine) -> None:
    config = ReconcileConfig(remember=0)
    history = [
        produce("s", "a", 0), consume("s", "a", "g1", 1),
        produce("s", "b", 0, outcome="error"), consume("s", "b", "g1", 2),
        produce("s", "c", 0),
    ]  # fmt: skip
    ingest(store, history)
    reconcile(store, config, T + 400)
    late_group = [
        consume("s", "a", "g2", 500), consume("s", "d", "g2", 500), produce("s", "d", 499),
    ]  # fmt: skip
    ingest(store, late_group)
    reconcile(store, config, T + 1000)
    want = oracle([*history, *late_group])
    assert_figures(figures(store), want)
    assert_discrepancies(store, want)
    g2 = figures(store)[("s", "g2")]
    assert (g2["produced"], g2["delivered"], g2["lost"], g2["late"]) == (3, 1, 2, 1)


# --- the lease -----------------------------------------------------------------------------


def test_one_engine_per_store(store: Engine) -> None:
    with Reconciler(store, DEFAULT):
        with pytest.raises(LeaseHeld):
            Reconciler(store, DEFAULT).open()
        with pytest.raises(LeaseHeld):
            reconcile(store, DEFAULT)
    reconcile(store, DEFAULT)  # released with the first one


def test_a_back_fill_counts_a_resent_record_once(store: Engine) -> None:
    """A group that appears after an id was forgotten is owed it from the log,
    where a record sent twice (same record id) is logged twice: it counts once
    there too (a resend with another attempt is no retry)."""
    ingest(store, [
        produce("s", "m1", 0, record_id="r1"),
        produce("s", "m1", 1, attempt=2, record_id="r1"),  # a resend of r1
        consume("s", "m1", "g1", 2),
    ])  # fmt: skip
    run_at = [10.0, 400.0]  # judged, then forgotten (300 + 10 + 60)
    for at in run_at:
        reconcile(store, DEFAULT, T + at)
    ingest(store, [produce("s", "m2", 500), consume("s", "m2", "g2", 501)])
    reconcile(store, DEFAULT, T + 1000)
    got = figures(store)
    assert got[("s", "g2")]["lost"] == 1 and got[("s", "g2")]["retried"] == 0
    assert got[("s", "g1")]["retried"] == 0
