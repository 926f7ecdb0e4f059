"""A bounded disk (msgtally.reconcile.retention), on SQLite and on PostgreSQL.

Known histories: batches of ids received 100 s apart, each applied by its own
tick, checkpoints taken where the test says. Pruning deletes exactly the log
rows that are applied, past every kept checkpoint and older than the window;
verdict rows go --retain-verdicts past their deadline; nothing else changes
and every figure stays the oracle's. A group first seen after the window is
back-filled from what the log still holds, and says from when; a restart
that falls back to an older checkpoint replays what pruning left. SQLite
reuses and gives back the freed pages.

The long run through a real `msgtally serve` (bench/retention.py's code) is
the slow test at the end.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, update

from msgtally.oracle import Record, oracle
from msgtally.reconcile import retention
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler
from msgtally.reconcile.history import Retention
from msgtally.store.db import open_store
from msgtally.store.held import log_held_since
from msgtally.store.tables import (
    checkpoint,
    log,
    log_pending,
    metadata,
    tick_loads,
    ticks,
    verdicts,
)
from tests.conftest import LiveCollector
from tests.harness import T, assert_discrepancies, assert_figures, consume, figures, ingest, produce
from tests.test_engine import snapshot

# Ids are judged 31 s after their produce and forgotten at once: a batch's ids
# are out of memory by the next batch's tick, so what the log holds is all a
# back-fill can find.
CONFIG = ReconcileConfig(deadline=30, settle=1, remember=0, expected_groups={"s": ("g",)})
NEVER = 1e12
# What pruning may change; every other table must stay as it was.
PRUNED_TABLES = {"log", "ticks", "tick_loads", "engine_events", "meta", "verdicts"}


def keep(log_window: float = NEVER, verdicts: float = NEVER) -> Retention:
    return Retention(minutes=log_window, hours=NEVER, verdicts=verdicts)


def batch(i: int, groups: tuple[str, ...] = ("g",)) -> list[Record]:
    """Batch i, produced at 100 i: b{i}-0 and b{i}-1 consumed by every group, b{i}-2 lost."""
    out = [produce("s", f"b{i}-{k}", 100 * i, record_id=f"b{i}-{k}/p") for k in range(3)]
    out += [consume("s", f"b{i}-{k}", g, 100 * i + 1, record_id=f"b{i}-{k}/{g}")
            for k in range(2) for g in groups]  # fmt: skip
    return out


def apply(store: Engine, r: Reconciler, i: int, groups: tuple[str, ...] = ("g",)) -> list[int]:
    """Batch i received at T + 100 i as two requests (produces, consumes), applied by
    one tick at that time; its log ids."""
    records = batch(i, groups)
    ingest(store, [x for x in records if x.kind == "produce"], received_at=T + 100 * i)
    ingest(store, [x for x in records if x.kind == "consume"], received_at=T + 100 * i)
    r.tick(T + 100 * i)
    with store.connect() as conn:
        query = select(log.c.id).order_by(log.c.id.desc()).limit(2)
        return sorted(int(x) for x in conn.execute(query).scalars())


def held(store: Engine) -> set[int]:
    with store.connect() as conn:
        return {int(x) for x in conn.execute(select(log.c.id)).scalars()}


def others(store: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table pruning must leave alone."""
    out = {}
    with store.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name not in PRUNED_TABLES:
                rows = conn.execute(select(table)).all()
                out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def checkpoint_ticks(store: Engine) -> set[int]:
    with store.connect() as conn:
        return {int(t) for t in conn.execute(select(checkpoint.c.tick)).scalars()}


def position(store: Engine) -> tuple[int, int]:
    """(the tick pruned through, the first tick held)."""
    with store.connect() as conn:
        first = conn.execute(select(func.min(ticks.c.tick))).scalar()
        return retention.pruned_tick(conn), int(first or 0)


@pytest.fixture
def engine(store: Engine) -> Iterator[Reconciler]:
    """The engine, checkpointing only when the test says."""
    r = Reconciler(store, CONFIG, checkpoint_every=NEVER).open()
    yield r
    r.close(checkpoint=False)


def test_pruning_takes_exactly_the_applied_rows_past_every_checkpoint_and_the_window(
    store: Engine, engine: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, tick_of = {}, {}
    for i in range(1, 9):
        rows[i] = apply(store, engine, i)
        tick_of[i] = engine.tick_no
        if i in (3, 5, 6):
            engine.checkpoint()
    # Old, never applied: received long ago, pending all the same.
    ingest(store, batch(9), received_at=T + 50)
    pending = max(held(store))
    assert checkpoint_ticks(store) == {tick_of[3], tick_of[5], tick_of[6]}
    everything, before, kept = held(store), snapshot(store), others(store)

    # A chunk ends before it passes CHUNK_ROWS rows: tick 1's two, not tick 2's too.
    monkeypatch.setattr(retention, "CHUNK_ROWS", 3)
    once = retention.prune(store, T + 1000, keep(750), max_chunks=1)
    assert (once.log_rows, once.ticks, once.more) == (2, 1, True)
    assert held(store) == everything - set(rows[1])
    monkeypatch.undo()
    # The window (cutoff T + 250) keeps batch 3 on.
    rest = retention.prune(store, T + 1000, keep(750))
    assert (rest.log_rows, rest.ticks) == (2, 1)
    assert held(store) == everything - set(rows[1]) - set(rows[2])
    assert position(store) == (tick_of[2], tick_of[2] + 1)
    # The oldest checkpoint (batch 3's tick) keeps batch 4 on, however old.
    assert retention.prune(store, T + 1000, keep(50)).log_rows == 2
    assert held(store) == everything - set(rows[1] + rows[2] + rows[3])
    assert position(store) == (tick_of[3], tick_of[3] + 1)
    assert retention.prune(store, T + 1000, keep(50)) == retention.Pruned()
    # A newer checkpoint in place of the oldest moves the bound to batch 5's tick.
    engine.checkpoint()
    kept["checkpoint"] = others(store)["checkpoint"]
    assert retention.prune(store, T + 1000, keep(50)).log_rows == 4
    gone = set(rows[1] + rows[2] + rows[3] + rows[4] + rows[5])
    assert held(store) == everything - gone and pending in held(store)
    assert position(store) == (tick_of[5], tick_of[5] + 1)
    with store.connect() as conn:
        assert conn.execute(select(log_pending.c.id)).scalars().all() == [pending]
        assert log_held_since(conn) == T + 600
        assert retention.position(conn) == retention.Position(tick_of[5], max(gone), T + 500)
    assert snapshot(store) == before and others(store) == kept


def test_the_verdict_rows_a_tick_loaded_go_with_it(store: Engine, engine: Reconciler) -> None:
    apply(store, engine, 1)
    engine.tick(T + 140)  # b1-2 judged lost and forgotten
    ingest(store, [consume("s", "b1-2", "g", 150)], received_at=T + 150)
    engine.tick(T + 150)  # late: its verdict row loaded back, and recorded with the tick
    late = engine.tick_no
    for i in (3, 4, 5):  # every checkpoint kept after it: the log may go
        apply(store, engine, i)
        engine.checkpoint()
    with store.connect() as conn:
        assert conn.execute(select(tick_loads.c.tick)).scalars().all() == [late]
    retention.prune(store, T + 1000, keep(50))
    assert position(store)[0] >= late
    with store.connect() as conn:
        assert conn.execute(select(tick_loads.c.tick)).scalars().all() == []


def test_a_backfill_pins_what_it_scanned_and_a_fallback_replays_after_pruning(
    store: Engine, engine: Reconciler, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    records: list[Record] = []
    tick_of = {}
    for i in range(1, 5):
        apply(store, engine, i)
        records += batch(i)
        tick_of[i] = engine.tick_no
        if i >= 2:
            engine.checkpoint()
    retention.prune(store, T + 1000, keep(50))
    assert position(store)[0] == tick_of[2]
    # g2 first appears: back-filled from what the log holds (batches 3 and 4 on).
    apply(store, engine, 5, ("g", "g2"))
    records += batch(5, ("g", "g2"))
    tick_of[5] = engine.tick_no
    assert retention.prune(store, T + 10_000, keep(1)) == retention.Pruned()
    for i in (6, 7):
        apply(store, engine, i, ("g", "g2"))
        records += batch(i, ("g", "g2"))
        tick_of[i] = engine.tick_no
        engine.checkpoint()
        pruned = retention.prune(store, T + 10_000, keep(1))
        # The back-fill's scan is pinned until every checkpoint kept is past it.
        assert pruned.log_rows == (0 if i == 6 else 4)
    backfill_tick = tick_of[5] - 1  # its event, numbered with the ticks, then batch 5's tick
    assert checkpoint_ticks(store) == {backfill_tick, tick_of[6], tick_of[7]}
    assert position(store) == (tick_of[4], tick_of[5])

    # A restart on damaged newer checkpoints falls back to the back-fill's: exact.
    engine.close(checkpoint=False)
    with store.begin() as conn:
        conn.execute(update(checkpoint).where(checkpoint.c.tick > backfill_tick)
                     .values(body=b"damaged"))  # fmt: skip
    again = Reconciler(store, CONFIG, checkpoint_every=NEVER).open()
    try:
        assert again.rebuilt is not None
        apply(store, again, 8, ("g", "g2"))
        records += batch(8, ("g", "g2"))
        again.tick(T + 5000, final=True)
    finally:
        again.close()
    want = oracle(records, deadline=30, expected_groups={"s": ("g",)})
    # g2 counts the ids received since batch 3 (what the log held at its back-fill).
    since = [x for x in records if int(x.message_id[1]) >= 3]
    want[("s", "g2")] = oracle(since, deadline=30)[("s", "g2")]
    # batches 3 and 4 every id, then one a batch (5 to 8)
    assert want[("s", "g2")].counts["lost"] == 3 + 3 + 4
    assert_figures(figures(store), want)
    assert_discrepancies(store, want)

    with LiveCollector(store, CONFIG) as live:
        slis = {r["group"]: r for r in httpx.get(f"{live.url}/v1/slis").json()}
    assert slis["g2"]["backfilled_since"] == T + 300 and slis["g"]["backfilled_since"] is None
    assert slis["g"]["log_held_since"] == T + 500  # batches 5 on
    from msgtally.cli import main

    assert main(["report", "--db", db_url]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "s / g2: a group first seen after the log was pruned: it counts the ids received " \
        "since 2023-11-14 22:18:20 UTC" in said  # fmt: skip
    assert "the log holds the records received since 2023-11-14 22:21:40 UTC" in said


def test_verdict_rows_go_past_their_deadline_and_every_figure_stays(
    store: Engine, engine: Reconciler
) -> None:
    records = []
    for i in (1, 11, 21):
        apply(store, engine, i)
        records += batch(i)
    stray = [consume("s", "stray", "g", 1500, record_id="stray")]  # consumed, never produced
    ingest(store, stray, received_at=T + 1500)
    records += stray
    engine.tick(T + 3000, final=True)
    want = oracle(records, deadline=30, expected_groups={"s": ("g",)})
    assert_figures(figures(store), want)
    assert_discrepancies(store, want)
    before, kept = snapshot(store), others(store)
    # Lost b1-2 (deadline T + 130) and b11-2 (T + 1130) go; the stray and b21-2 (T + 2130) stay.
    done = retention.prune(store, T + 1200, keep(verdicts=0))
    assert (done.verdicts, done.log_rows) == (2, 0)
    from msgtally.slis.read.query import read_discrepancies

    with store.connect() as conn:
        rows = {r.message_id: r.deadline for r in conn.execute(select(verdicts))}
        left = {r["message_id"] for k in ("lost", "unexpected")
                for r in read_discrepancies(conn, kind=k)}  # fmt: skip
    assert rows == {"b21-2": T + 2130, "stray": T + 1530} and left == set(rows)
    assert snapshot(store)["figures"] == before["figures"] and others(store) == kept
    assert_figures(figures(store), want)


def test_sqlite_reuses_and_gives_back_the_space(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    r = Reconciler(store, CONFIG, checkpoint_every=NEVER).open()
    sizes, free = [], []
    try:
        assert retention.auto_vacuum(store) == "incremental"
        for cycle in range(6):
            for k in range(3):
                at = 1000 * cycle + 100 * k
                ids = [f"c{cycle}-{k}-{n}-" + "x" * 100 for n in range(150)]
                wide = [produce("s", i, at) for i in ids] + [consume("s", i, "g", at) for i in ids]
                ingest(store, wide, received_at=T + at)
                r.tick(T + at)
                r.checkpoint()
            retention.prune(store, T + 1000 * cycle + 500, keep(50, verdicts=0))
            free.append(retention.free_pages(store))
            retention.reclaim(store, max_steps=None)
            sizes.append(retention.store_bytes(store))
            assert retention.free_pages(store) == 0
    finally:
        r.close(checkpoint=False)
        store.dispose()
    # Each cycle prunes the one before: pages are freed, given back, and the file
    # is the same size from the second cycle on.
    assert all(f > 0 for f in free[1:])
    assert max(sizes[2:]) <= sizes[1], sizes


# --- the long run (bench/retention.py) ---------------------------------------------

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench() -> Any:
    sys.path.insert(0, str(BENCH))  # its sibling module _common
    spec = importlib.util.spec_from_file_location("bench_retention", BENCH / "retention.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_steady_rate_through_a_collector_keeps_the_log_to_its_window_and_exact(
    tmp_path: Path,
) -> None:
    bench = _bench()
    # What a short run can hold: the log never holds more than the window's rows
    # plus the ticks the kept checkpoints still need (~15 s here), the file does
    # not grow past the window, and every figure is exact.
    run = bench.run(tmp_path, seconds=60, window=20, rate=1500, pruned=True, deadline=5,
                    remember=5, progress=print)  # fmt: skip
    assert run.problems == [], run.problems
    assert run.held_since_age is not None and run.held_since_age < 20 + 30
    # Requests a second, from the samples before anything can be pruned: an
    # unpruned log passes window + 15 s of them at 35 s and never comes back.
    per_second = max(n / at for at, _db, _wal, n in run.sizes if 0 < at <= 20)
    bound = per_second * (20 + 15)
    held = [n for at, _db, _wal, n in run.sizes if at >= run.seconds / 2]
    assert max(held) <= bound, (bound, held)
    # The file does not grow once the window is full: the last quarter's largest
    # size is the third quarter's. (Its swing, the log's rows between two pruning
    # passes, is large against a store this small: the bench's 10-minute run
    # measures flatness against its goal, docs/retention.md.)
    quarter = {3: [db for at, db, _w, _n in run.sizes if 30 <= at < 45],
               4: [db for at, db, _w, _n in run.sizes if at >= 45]}
    assert max(quarter[4]) <= 1.05 * max(quarter[3]), quarter
