"""Readiness tells the truth about the engine: 503 with the reason while its
ticks fail (a store that refuses the engine's writes), and while a backlog
does not shrink and nothing is applied (another engine holds the lease and
does no work); ready again once the engine works. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import Engine, text

from msgtally.app import EngineLoop
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler
from tests.conftest import LiveCollector
from tests.harness import consume, figures, ingest, produce

CONFIG = ReconcileConfig(settle=0.2)


def wait_for(what: str, done: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


def refuse_ticks(store: Engine) -> None:
    """The store refuses the engine's tick rows: every tick that applied something fails."""
    with store.begin() as conn:
        if store.dialect.name == "sqlite":
            conn.execute(text(
                "CREATE TRIGGER refuse BEFORE INSERT ON ticks "
                "BEGIN SELECT RAISE(ABORT, 'the store refuses writes'); END"
            ))  # fmt: skip
        else:
            conn.execute(text(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'the store refuses writes'; END $$ LANGUAGE plpgsql"
            ))  # fmt: skip
            conn.execute(text(
                "CREATE TRIGGER refuse BEFORE INSERT ON ticks "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            ))  # fmt: skip


def accept_ticks(store: Engine) -> None:
    with store.begin() as conn:
        on = "" if store.dialect.name == "sqlite" else " ON ticks"
        conn.execute(text(f"DROP TRIGGER refuse{on}"))


def test_a_failing_engine_makes_the_collector_unready_until_it_works(store: Engine) -> None:
    with LiveCollector(store, CONFIG, reconcile_interval=0.05) as live:
        loop = live.app.state.engine_loop
        loop.MAX_BACKOFF = 0.5  # retries come quickly once the store takes writes again
        wait_for("the engine", lambda: readyz(live.url).json().get("engine") == "running")
        refuse_ticks(store)
        ingest(store, [produce("s", "m", 0), consume("s", "m", "g", 1)], received_at=time.time())
        wait_for("the tick to fail", lambda: readyz(live.url).status_code == 503)
        reason = readyz(live.url).json()["detail"]["reason"]
        assert reason.startswith("the engine is failing (")
        assert "the store refuses writes" in reason
        assert httpx.get(f"{live.url}/healthz").status_code == 200  # alive, not ready
        accept_ticks(store)
        wait_for("the engine to work again", lambda: readyz(live.url).status_code == 200)
        wait_for("the figures", lambda: ("s", "g") in figures(store))
        row = figures(store)[("s", "g")]
        assert (row["produced"], row["delivered"], row["duplicated"]) == (1, 1, 0)


def test_a_backlog_that_does_not_shrink_makes_the_collector_unready(
    store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another engine holds the store's lease and applies nothing: the records
    wait, and readiness says so; once that engine goes, this one takes over."""
    monkeypatch.setattr(EngineLoop, "STALE", 1.0)  # shorter waits, the same rules
    monkeypatch.setattr(EngineLoop, "STANDBY", 0.5)
    idle = Reconciler(store, CONFIG).open()
    try:
        with LiveCollector(store, CONFIG, reconcile_interval=0.05) as live:
            wait_for("standby", lambda: readyz(live.url).json().get("engine") == "standby")
            records = [produce("s", "m", 0), consume("s", "m", "g", 1)]
            ingest(store, records, received_at=time.time())
            wait_for("unready", lambda: readyz(live.url).status_code == 503, seconds=60)
            reason = readyz(live.url).json()["detail"]["reason"]
            assert reason.startswith("the backlog (2 records) has not shrunk for")
            assert "the engine applied nothing (another engine holds the store's lease)" in reason
            idle.close()
            wait_for("the takeover", lambda: readyz(live.url).status_code == 200, seconds=60)
            assert readyz(live.url).json()["engine"] == "running"
            assert figures(store)[("s", "g")]["delivered"] == 1
    finally:
        idle.close()
