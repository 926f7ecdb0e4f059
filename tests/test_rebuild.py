"""Checkpoints that do not load: set aside with the reason, and, every kept
one damaged, the state rebuilt from the whole log (every recorded tick and
event replayed at its clocks, nothing written twice). Every figure equals an
uninterrupted run's. On SQLite and on PostgreSQL. (One damaged checkpoint
falling back to the one before it: tests/test_retention.py.)"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update

from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler
from msgtally.store.tables import checkpoint, checkpoint_rejected
from tests.conftest import LiveCollector
from tests.depth import examples
from tests.harness import KEEP_ALL, T, consume, figures, ingest, produce, wipe
from tests.test_engine import Batches, snapshot, timed_histories


def _flip(body: bytes) -> bytes:
    damaged = bytearray(body)
    damaged[len(body) // 2] ^= 0x01
    return bytes(damaged)


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda body: body[: len(body) // 2],
    "one byte flipped": _flip,
    "a future version": lambda body: body[:8] + struct.pack("<I", 5) + body[12:],
}
REASONS = {
    "truncated": "checkpoint: header: field 'length'",
    "one byte flipped": "checkpoint: header: field 'checksum' does not match the body",
    "a future version": "field 'version' is 5, this machine reads 1 to 4",
}


def damage(store: Engine, how: str) -> None:
    """Damages every checkpoint kept: none loads."""
    with store.begin() as conn:
        for slot, body in conn.execute(select(checkpoint.c.id, checkpoint.c.body)).all():
            damaged = DAMAGES[how](bytes(body))
            conn.execute(update(checkpoint).where(checkpoint.c.id == slot).values(body=damaged))


def _run(
    store: Engine, config: ReconcileConfig, batches: Batches, damaged_at: int | None,
    how: str, checkpoint_every: float,
) -> list[Reconciler]:  # fmt: skip
    """Ingest and tick batch by batch; after tick `damaged_at` the engine stops, its
    checkpoint is damaged, and the next engine opens on it."""
    opened = [Reconciler(store, config, checkpoint_every=checkpoint_every).open()]
    for i, (at, batch, marks) in enumerate(batches):
        ingest(store, batch, received_at=T + at, sequences=marks)
        opened[-1].tick(T + at)
        if i == damaged_at:
            opened[-1].close()
            damage(store, how)
            opened.append(Reconciler(store, config, checkpoint_every=checkpoint_every).open())
    opened[-1].tick(T + batches[-1][0] + 2000, final=True)
    opened[-1].close()
    return opened


@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_checkpoint_is_set_aside_and_the_figures_stay_exact(
    store: Engine, how: str
) -> None:
    @settings(
        max_examples=examples(6, 12) if store.dialect.name == "sqlite" else examples(3, 5),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        batches=timed_histories(),
        at=st.integers(0, 7),
        checkpoint_every=st.sampled_from((0.0, 1e9)),
        remember=st.sampled_from((0.0, 600.0)),
        expect=st.booleans(),
    )
    def check(
        batches: Batches, at: int, checkpoint_every: float, remember: float, expect: bool
    ) -> None:
        config = ReconcileConfig(
            remember=remember, expected_groups={"s1": ("g9",)} if expect else {}
        )
        damaged_at = min(at, len(batches) - 1)
        note(f"damaged ({how}) after tick {damaged_at}, checkpoint_every={checkpoint_every}")
        wipe(store)
        _run(store, config, batches, None, how, checkpoint_every)
        uninterrupted = snapshot(store)
        wipe(store)
        opened = _run(store, config, batches, damaged_at, how, checkpoint_every)
        assert snapshot(store) == uninterrupted
        assert opened[1].rebuilt is not None and REASONS[how] in opened[1].rebuilt
        with store.connect() as conn:
            rows = conn.execute(select(checkpoint_rejected)).all()
        assert rows and all(REASONS[how] in r.reason and r.rejected_at > 0 for r in rows)

    check()


def _history(store: Engine, config: ReconcileConfig) -> None:
    """Lost, late, duplicated, unexpected and delivered ids, judged and forgotten."""
    ingest(store, [
        produce("s", "lost", 0), produce("s", "ok", 0), consume("s", "ok", "g", 1),
        produce("s", "dup", 0), consume("s", "dup", "g", 1), consume("s", "dup", "g", 2),
        consume("s", "ghost", "g", 3),
    ], received_at=T)  # fmt: skip
    with Reconciler(store, config) as live:
        live.tick(T + 1000, final=True)


def _collector_run(store: Engine, config: ReconcileConfig, how: str | None) -> dict[str, Any]:
    _history(store, config)
    if how is not None:
        damage(store, how)
    with LiveCollector(store, config, reconcile_interval=0.05, retention=KEEP_ALL) as live:
        deadline = time.monotonic() + 30
        while httpx.get(f"{live.url}/readyz").json().get("engine") != "running":
            assert time.monotonic() < deadline, "the collector did not start its engine"
            time.sleep(0.05)
        # Records for ids the engine forgot: found again in the store, or new ids.
        late = [consume("s", "lost", "g", 1500), consume("s", "dup", "g", 1501)]
        ingest(store, late, received_at=time.time())
        while figures(store)[("s", "g")]["late"] != 1:
            assert time.monotonic() < deadline, "the engine did not apply the late records"
            time.sleep(0.05)
        assert httpx.get(f"{live.url}/readyz").status_code == 200
    return snapshot(store)


@pytest.mark.parametrize("how", list(DAMAGES))
def test_the_collector_starts_on_a_damaged_checkpoint_and_says_why(
    store: Engine, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = ReconcileConfig(remember=0)
    uninterrupted = _collector_run(store, config, None)
    wipe(store)
    with caplog.at_level(logging.INFO, logger="msgtally.reconcile.engine"):
        rebuilt = _collector_run(store, config, how)
    assert rebuilt == uninterrupted
    said = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert said and REASONS[how] in said[0].getMessage()
    assert "set aside in table checkpoint_rejected" in said[0].getMessage()
    with store.connect() as conn:
        rows = conn.execute(select(checkpoint_rejected)).all()
    assert rows and all(REASONS[how] in r.reason for r in rows)


def _found_again(store: Engine, config: ReconcileConfig, stop: str | None) -> dict[str, Any]:
    """m is consumed by g1 and never produced, judged unexpected and forgotten; then
    consumed by g2 and produced in one tick, which loads m's verdict row back from
    the store and writes g2's delivery over it. `stop`: how the engine stops after
    that tick (None: it does not), the next one replaying it."""
    engine = Reconciler(store, config, checkpoint_every=1e9).open()
    ingest(store, [consume("s", "m", "g1", 1)], received_at=T + 1)
    engine.tick(T + 1)
    engine.tick(T + 401)  # m unexpected for g1, forgotten (remember=0)
    ingest(store, [consume("s", "m", "g2", 801), produce("s", "m", 801)], received_at=T + 801)
    engine.tick(T + 801)
    if stop is not None:
        engine.close(checkpoint=stop == "damaged")
        if stop == "damaged":
            damage(store, "truncated")
        engine = Reconciler(store, config, checkpoint_every=1e9).open()
    engine.tick(T + 3000, final=True)
    engine.close()
    return snapshot(store)


@pytest.mark.parametrize("stop", ["damaged", "crashed"])
def test_a_replayed_tick_loads_a_forgotten_id_as_it_was_then(store: Engine, stop: str) -> None:
    """A replayed tick that finds a forgotten id again gets its verdict rows as
    they were when the tick ran, not as that tick and later ones rewrote them:
    with g2's delivery loaded early, the expected group g9 would have had "the
    plain delivery" instead of m lost. Every checkpoint damaged (the whole log
    replayed), or a crash (the tick replayed after the back-fill's checkpoint)."""
    config = ReconcileConfig(remember=0, expected_groups={"s": ("g9",)})
    uninterrupted = _found_again(store, config, None)
    assert uninterrupted["lost"] == {("s", "g9"): {"m"}}
    wipe(store)
    assert _found_again(store, config, stop) == uninterrupted
