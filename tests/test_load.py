"""Under load: the collector stays live, the WAL stays bounded, and a PostgreSQL
restart in the middle of a stream loses nothing. Slow: `pytest -m slow`."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgtally.reconcile.config import ReconcileConfig
from msgtally.store.db import WAL_SIZE_LIMIT, open_store
from tests.conftest import LiveCollector
from tests.harness import logged

pytestmark = pytest.mark.slow


def body(n: int, first: int, ts: float) -> list[dict[str, Any]]:
    """n ids, each produced and consumed by one group (in time)."""
    out: list[dict[str, Any]] = []
    for i in range(first, first + n):
        mid = f"m{i}"
        out.append({"stream": "s", "kind": "produce", "message_id": mid, "ts": ts,
                    "record_id": f"{mid}/p"})  # fmt: skip
        out.append({"stream": "s", "kind": "consume", "message_id": mid, "group": "g",
                    "ts": ts + 0.5, "record_id": f"{mid}/c"})  # fmt: skip
    return out


def post_until_ok(client: httpx.Client, url: str, payload: list[dict[str, Any]]) -> float:
    """Send until a 200, as a shim; the seconds the accepted request took."""
    while True:
        started = time.monotonic()
        try:
            if client.post(f"{url}/v1/records", json=payload).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def test_the_wal_stays_bounded_under_concurrent_ingest(tmp_path: Path) -> None:
    db = tmp_path / "wal.db"
    store = open_store(str(db))
    peak = 0
    stop = threading.Event()
    with LiveCollector(store, ReconcileConfig(), reconcile_interval=0.2) as live:

        def read() -> None:  # readers hold snapshots: what kept the WAL from restarting
            with httpx.Client() as client:
                while not stop.is_set():
                    client.get(f"{live.url}/v1/slis")
                    client.get(f"{live.url}/metrics")

        def write(k: int) -> None:
            with httpx.Client(timeout=30) as client:
                for j in range(15):
                    post_until_ok(client, live.url, body(5000, (k * 15 + j) * 5000, time.time()))

        readers = [threading.Thread(target=read) for _ in range(2)]
        writers = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for t in readers + writers:
            t.start()
        wal = Path(f"{db}-wal")
        while any(t.is_alive() for t in writers):
            peak = max(peak, wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.05)
        stop.set()
        for t in readers:
            t.join()
    assert len(logged(store)) == 4 * 15 * 5000 * 2
    assert peak < 2 * WAL_SIZE_LIMIT, f"the WAL reached {peak / 2**20:.0f} MiB"
    store.dispose()


def test_liveness_and_ingest_do_not_wait_for_a_backlog(tmp_path: Path) -> None:
    """A million records wait in the log; while the engine works through them,
    /healthz answers at once and new batches are taken within a shim's timeout."""
    store = open_store(str(tmp_path / "backlog.db"))
    with (
        LiveCollector(store, ReconcileConfig(), reconcile_interval=3600) as live,
        httpx.Client(timeout=60) as client,
    ):
        for j in range(50):
            post_until_ok(client, live.url, body(10_000, j * 10_000, time.time() - 400))
    health: list[float] = []
    posts: list[float] = []
    with (
        LiveCollector(store, ReconcileConfig(), reconcile_interval=0.1) as live,
        httpx.Client(timeout=30) as client,
    ):
        started = time.monotonic()
        n = 1_000_000
        while time.monotonic() - started < 8:
            t = time.monotonic()
            assert client.get(f"{live.url}/healthz").status_code == 200
            health.append(time.monotonic() - t)
            posts.append(post_until_ok(client, live.url, body(500, n, time.time())))
            n += 500
    assert max(health) < 0.5, f"healthz took up to {max(health):.2f} s"
    assert max(posts) < 5.0, f"a POST took {max(posts):.2f} s (the shim's timeout is 5 s)"
    assert statistics.median(posts) < 0.5
    store.dispose()


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def _wait_for_postgresql() -> None:
    for _ in range(120):
        if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError("PostgreSQL did not come back")


def test_a_postgresql_restart_under_load_loses_nothing(pg_url: str) -> None:
    store = open_store(pg_url)
    ts = time.time() - 400
    with LiveCollector(store, ReconcileConfig(), reconcile_interval=0.1) as live:

        def write(k: int) -> None:
            with httpx.Client(timeout=30) as client:
                for j in range(40):
                    post_until_ok(client, live.url, body(500, (k * 40 + j) * 500, ts))
                    time.sleep(0.02)

        writers = [threading.Thread(target=write, args=(k,)) for k in range(3)]
        for t in writers:
            t.start()
        time.sleep(0.5)
        subprocess.run([*_pg_cluster(), "restart", "-m", "immediate"], check=True)
        _wait_for_postgresql()
        for t in writers:
            t.join(180)
        deadline = time.monotonic() + 60
        while True:
            try:
                slis = httpx.get(f"{live.url}/v1/slis").json()
            except httpx.TransportError:
                slis = []
            if slis and slis[0]["delivered"] == 3 * 40 * 500:
                break
            assert time.monotonic() < deadline, slis
            time.sleep(0.5)
    (row,) = slis
    assert (row["produced"], row["delivered"], row["lost"], row["duplicated"]) == (
        60_000, 60_000, 0, 0)
    store.dispose()
    _wait_for_postgresql()  # before the fixture drops the database
