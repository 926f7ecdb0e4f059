"""Ingest and reconcile at the same time: nothing lost, nothing counted twice."""

from __future__ import annotations

import random
import threading
from typing import Any

import httpx
from sqlalchemy import Engine

from msgtally.ingest.intake.schema import Batch, parse_batch
from msgtally.ingest.intake.writer import write_batch
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.reconcile.lease import LeaseHeld
from msgtally.slis.read.query import read_slis
from tests.conftest import LiveCollector

T0 = 1_700_000_000.0
THREADS = 4
BATCHES = 12
IDS_PER_BATCH = 50


def _batch(rng: random.Random, thread: int, n: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """All records of the batch's ids travel together, so no record of an id
    can arrive after the id's verdict, whatever the interleaving."""
    records: list[dict[str, Any]] = []
    truth = {"produced": 0, "delivered": 0, "lost": 0, "duplicated": 0}
    for i in range(IDS_PER_BATCH):
        mid = f"t{thread}-b{n}-{i}"
        records.append({"stream": "orders", "kind": "produce", "message_id": mid, "ts": T0})
        truth["produced"] += 1
        copies = rng.choice((0, 1, 1, 1, 2))
        for c in range(copies):
            records.append(
                {
                    "stream": "orders",
                    "kind": "consume",
                    "message_id": mid,
                    "group": "billing",
                    "ts": T0 + 1 + c,
                }
            )
        truth["delivered" if copies else "lost"] += 1
        truth["duplicated"] += max(copies - 1, 0)
    rng.shuffle(records)
    return records, truth


def _figures(store: Engine) -> dict[str, int]:
    with store.connect() as conn:
        (sli,) = read_slis(conn)
    return {k: getattr(sli, k) for k in ("produced", "delivered", "lost", "duplicated")}


def test_ingest_during_reconcile_loses_and_doubles_nothing(store: Engine) -> None:
    config = ReconcileConfig(settle=0)
    totals = {"produced": 0, "delivered": 0, "lost": 0, "duplicated": 0}
    lock = threading.Lock()
    errors: list[BaseException] = []

    with LiveCollector(store, config, reconcile_interval=0.02) as live:

        def sender(thread: int) -> None:
            rng = random.Random(thread)
            try:
                with httpx.Client(base_url=live.url, timeout=60) as client:
                    for n in range(BATCHES):
                        records, truth = _batch(rng, thread, n)
                        resp = client.post("/v1/records", json=records)
                        resp.raise_for_status()
                        # A shim's resend after a timeout: logged again, counted once.
                        again = client.post("/v1/records", json=records).json()
                        assert again == {"accepted": len(records)}
                        with lock:
                            for k, v in truth.items():
                                totals[k] += v
            except BaseException as exc:  # surfaced below, in the test thread
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    reconcile(store, config)  # whatever the loop had not reached yet
    assert _figures(store) == totals
    assert totals["produced"] == THREADS * BATCHES * IDS_PER_BATCH


def test_two_reconcilers_never_count_an_id_twice(store: Engine) -> None:
    config = ReconcileConfig(settle=0, budget=200)
    rng = random.Random(5)
    expected = {"produced": 0, "delivered": 0, "lost": 0, "duplicated": 0}
    for n in range(20):
        records, truth = _batch(rng, 0, n)
        write_batch(store, Batch(parse_batch(records), [], None))
        for k, v in truth.items():
            expected[k] += v

    errors: list[BaseException] = []
    refused = []

    def worker() -> None:
        for _ in range(5):
            try:
                reconcile(store, config, now=T0 + 1000)
            except LeaseHeld:
                refused.append(1)  # the other one is at work: nothing half-done
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    reconcile(store, config, now=T0 + 1000)
    assert _figures(store) == expected
    assert len(refused) < 10  # one of them got the lease at least once
