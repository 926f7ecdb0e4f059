"""Figures over a window: the engine's per-minute and per-hour rows, their sums, their pruning.

A history judged minute by minute (a tick a minute, verdicts spread over
them), on SQLite and PostgreSQL: the minute rows add up to the running
totals, every window is the exact sum of its minute rows, /v1/slis?since and
`report --since` read the same, and pruning keeps what the hours hold.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from msgtally.names import TALLY_FIELDS
from msgtally.oracle import Record, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler
from msgtally.reconcile.history import Retention, prune
from msgtally.slis.read.query import read_slis
from msgtally.slis.read.windows import (
    bucket_quantile,
    first_minute,
    read_window,
    read_window_slis,
)
from msgtally.store.tables import tallies, tally_hours, tally_minutes
from tests.conftest import LiveCollector
from tests.harness import ingest

MINUTES = 45
CONFIG = ReconcileConfig(deadline=60.0, settle=0.0, remember=0.0)


def history(base: float) -> list[list[Record]]:
    """Records per minute: 8 ids a minute on `orders` for billing and shipping;
    every 5th lost for billing, every 7th delivered twice to shipping."""
    out = []
    n = 0
    for m in range(MINUTES):
        batch = []
        for _ in range(8):
            mid, at = f"m{n}", base + m * 60 + (n % 8) * 6
            batch.append(Record("orders", "produce", mid, at))
            if n % 5:
                batch.append(Record("orders", "consume", mid, at + 0.2 + (n % 3), "billing"))
            batch.append(Record("orders", "consume", mid, at + 0.5, "shipping"))
            if n % 7 == 0:
                batch.append(Record("orders", "consume", mid, at + 2, "shipping", attempt=2))
            n += 1
        out.append(batch)
    return out


def judge(store: Engine, base: float) -> list[Record]:
    """Ingest a minute, tick at its end; then a last tick past every deadline."""
    everything: list[Record] = []
    with Reconciler(store, CONFIG) as engine:
        for m, batch in enumerate(history(base)):
            ingest(store, batch, received_at=base + m * 60 + 50)
            everything += batch
            engine.tick(base + m * 60 + 59)
        engine.tick(base + MINUTES * 60 + 120, final=True)
    return everything


def minute_rows(store: Engine) -> list[dict[str, Any]]:
    with store.connect() as conn:
        return [dict(r) for r in conn.execute(select(tally_minutes)).mappings()]


def summed(rows: list[dict[str, Any]], start: int = 0) -> dict[tuple[str, str], dict[str, int]]:
    out: dict[tuple[str, str], dict[str, int]] = {}
    for r in rows:
        if r["at"] >= start:
            acc = out.setdefault((r["stream"], r["grp"]), dict.fromkeys(TALLY_FIELDS, 0))
            for f in TALLY_FIELDS:
                acc[f] += int(r[f])
    return out


def windowed(store: Engine, now: float, seconds: float) -> dict[tuple[str, str], dict[str, int]]:
    with store.connect() as conn:
        return {(s.stream, s.group): s.counts for s in read_window(conn, now, seconds)}


BASE = 1_700_000_000.0 - 1_700_000_000.0 % 3600 + 1_200  # 20 minutes past an hour


def test_minute_and_hour_rows_add_up_to_the_running_totals(store: Engine) -> None:
    records = judge(store, BASE)
    with store.connect() as conn:
        totals = {
            (r["stream"], r["grp"]): {f: int(r[f]) for f in TALLY_FIELDS}
            for r in conn.execute(select(tallies)).mappings()
        }
        hours = [dict(r) for r in conn.execute(select(tally_hours)).mappings()]
    rows = minute_rows(store)
    assert summed(rows) == totals
    assert summed(hours) == totals
    # Verdicts spread over the minutes: a tick's deltas land in its minute.
    assert len({r["at"] for r in rows}) > MINUTES // 2
    assert all(r["at"] % 60 == 0 for r in rows) and all(r["at"] % 3600 == 0 for r in hours)
    want = oracle(records, deadline=60.0)
    assert totals[("orders", "billing")]["lost"] == want[("orders", "billing")].counts["lost"] > 0


def test_a_window_is_the_exact_sum_of_its_minutes(store: Engine) -> None:
    judge(store, BASE)
    rows = minute_rows(store)
    now = BASE + MINUTES * 60 + 137  # after the last tick, as the clock always is
    for seconds in (300, 1800, 3600, 6 * 3600, 86_400, 3 * 86_400, 30 * 86_400):
        start = first_minute(now, seconds)
        assert start == int(now // 60) * 60 - (math.ceil(seconds / 60) - 1) * 60
        assert windowed(store, now, seconds) == summed(rows, start), seconds
    # In the middle of the history: the minutes up to now's.
    middle = BASE + 30 * 60 + 17
    for seconds in (60, 300, 1200):
        before = [r for r in rows if r["at"] <= middle]
        assert windowed(store, middle, seconds) == summed(before, first_minute(middle, seconds))


def test_pruned_minutes_leave_the_hours(store: Engine) -> None:
    judge(store, BASE)
    now = BASE + MINUTES * 60 + 120
    everything = summed(minute_rows(store))
    deleted = prune(store, now, Retention(minutes=30 * 60, hours=10 * 86_400))
    rows = minute_rows(store)
    assert deleted > 0 and min(r["at"] for r in rows) >= now - 30 * 60
    # Within the minutes kept: the exact sum of the minutes.
    assert windowed(store, now, 20 * 60) == summed(rows, first_minute(now, 20 * 60))
    # Past them: the hours before the first whole hour kept, then the minutes.
    assert windowed(store, now, 86_400) == everything
    prune(store, now + 20 * 86_400, Retention(minutes=60, hours=86_400))
    assert minute_rows(store) == [] and windowed(store, now, 86_400) == {}


def test_bucket_quantiles_interpolate_as_prometheus_does() -> None:
    buckets = {"0.1": 10, "0.5": 30, "1.0": 40, "+Inf": 20}
    assert bucket_quantile(buckets, 0.5) == pytest.approx(0.5 + 0.5 * 10 / 40)
    assert bucket_quantile(buckets, 0.05) == pytest.approx(0.05)
    assert bucket_quantile(buckets, 0.99) == 1.0  # in +Inf: the highest finite bound
    assert bucket_quantile({}, 0.5) is None


def test_slis_since_a_window_over_http(store: Engine) -> None:
    base = time.time() - MINUTES * 60 - 300
    judge(store, base)
    with LiveCollector(store, CONFIG) as collector:
        for since, seconds in (("5m", 300), ("30m", 1800), ("1h", 3600), ("6h", 21_600)):
            body = httpx.get(f"{collector.url}/v1/slis", params={"since": since}).json()
            now = body[0]["window"]["end"]
            with store.connect() as conn:
                want = {(s.stream, s.group): s.to_json()
                        for s in read_window_slis(conn, now, seconds)}  # fmt: skip
            got = {(r["stream"], r["group"]): r for r in body}
            assert got.keys() == want.keys()
            for key, row in got.items():
                assert row["window"]["since"] == since
                assert {k: v for k, v in row.items() if k != "window"} == want[key]
        everything = httpx.get(f"{collector.url}/v1/slis", params={"since": "3d"}).json()
        with store.connect() as conn:
            assert {(r["stream"], r["group"]): r["lost"] for r in everything} == {
                (s.stream, s.group): s.lost for s in read_slis(conn)
            }
        bad = httpx.get(f"{collector.url}/v1/slis", params={"since": "soon"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "since"
