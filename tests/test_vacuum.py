"""`msgtally vacuum`, on SQLite and on PostgreSQL: the dry run says what the
real run then deletes (the engine's own pruning), nothing else changes and the
figures stay; the space goes back; refused while an engine holds the store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from msgtally.cli import main
from msgtally.reconcile import retention
from msgtally.reconcile.engine import Reconciler
from msgtally.store.db import PG_STORAGE, open_store
from msgtally.store.tables import metadata
from tests.harness import T, ingest
from tests.test_engine import snapshot
from tests.test_retention import CONFIG, NEVER, apply, batch, held, others

COUNTS = re.compile(r"prune[d]? ([\d,]+) log rows \(([\d,]+) ticks\), ([\d,]+) verdict rows")


def history(store: Engine) -> dict[int, list[int]]:
    """Six batches (each with a lost id), checkpoints after the last three: the
    first four are due (through the oldest checkpoint's tick); an engine that
    stopped. Log ids per batch."""
    rows = {}
    r = Reconciler(store, CONFIG, checkpoint_every=NEVER).open()
    for i in range(1, 7):
        rows[i] = apply(store, r, i)
        if i >= 4:
            r.checkpoint()
    r.tick(T + 2000)
    r.close(checkpoint=False)
    return rows


def vacuum(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str]:
    code = main(["vacuum", "--db", db_url, "--retain", "1d", "--retain-verdicts", "1d", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_dry_run_says_what_vacuum_then_prunes_and_the_figures_stay(
    store: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = history(store)
    everything, before, kept = held(store), snapshot(store), others(store)
    code, said = vacuum(capsys, db_url, "--dry-run")
    assert code == 0, said
    would = COUNTS.search(said)
    # Batches 1 to 4 (8 log rows, 4 ticks); a lost id each from batches 1 to 6 (2023: all due).
    assert would is not None and would.groups() == ("8", "4", "6"), said
    assert held(store) == everything and snapshot(store) == before and others(store) == kept

    code, said = vacuum(capsys, db_url)
    assert code == 0, said
    done = COUNTS.search(said)
    assert done is not None and done.groups() == would.groups(), said
    assert held(store) == everything - set(rows[1] + rows[2] + rows[3] + rows[4])
    # The per-minute rows past --retain go too (the engine's pruning); nothing else.
    assert snapshot(store)["figures"] == before["figures"]
    after = others(store)
    assert {k: v for k, v in after.items() if not k.endswith("_minutes")} == {
        k: v for k, v in kept.items() if not k.endswith("_minutes")}  # fmt: skip
    assert any(kept[k] for k in kept if k.endswith("_minutes"))
    assert not any(after[k] for k in after if k.endswith("_minutes"))
    assert "the store:" in said
    if store.dialect.name == "sqlite":
        assert retention.free_pages(store) == 0
    else:  # the pruned tables carry autovacuum's settings
        with store.connect() as conn:
            options = conn.exec_driver_sql(
                "SELECT reloptions FROM pg_class WHERE relname = 'log'").scalar()  # fmt: skip
        assert set(options) >= {f"{k}={v}" for k, v in PG_STORAGE.items()}
    code, said = vacuum(capsys, db_url)
    assert code == 0 and "pruned 0 log rows (0 ticks), 0 verdict rows" in said


def test_vacuum_is_refused_while_an_engine_holds_the_store(
    store: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest(store, batch(1), received_at=T + 100)
    with Reconciler(store, CONFIG):
        code, said = vacuum(capsys, db_url)
    assert code == 1
    assert "a collector's engine" in said and "stop it to vacuum now" in said
    assert "pruned" not in said


def test_full_rewrites_a_store_made_before_incremental_auto_vacuum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    plain = create_engine(url)  # tables made without msgtally's pragmas: no auto-vacuum
    metadata.create_all(plain)
    plain.dispose()
    store = open_store(url)
    try:
        history(store)
        assert retention.auto_vacuum(store) == "none"
        code, said = vacuum(capsys, url)
        assert code == 0 and "made before incremental auto-vacuum" in said
        code, said = vacuum(capsys, url, "--full")
        assert code == 0, said
        store.dispose()  # a connection open across the VACUUM keeps the mode it read
        assert retention.auto_vacuum(store) == "incremental"
        assert retention.free_pages(store) == 0
    finally:
        store.dispose()
