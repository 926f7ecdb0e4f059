"""The collector's ingest counters on GET /metrics: records accepted, requests refused;
and the engine's count of records new and repeated."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from msgtally.app import create_app
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.server import BackgroundServer
from msgtally.store.db import open_store
from tests.conftest import LiveCollector

T0 = 1_700_000_000.0


def rec(mid: str, kind: str = "produce", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"stream": "orders", "kind": kind, "message_id": mid, "ts": T0}
    if kind == "consume":
        base.update(group="billing", ts=T0 + 1)
    base.update(extra)
    return base


def ingest_samples(url: str) -> dict[tuple[str, str], float]:
    """(family, label value) -> value of the msgtally_ingest_* counters."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if not family.name.startswith("msgtally_ingest_"):
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                out[(s.name, next(iter(s.labels.values())))] = s.value
    return out


ZERO = {
    ("msgtally_ingest_records_total", "accepted"): 0.0,
    ("msgtally_ingest_rejected_total", "malformed"): 0.0,
    ("msgtally_ingest_rejected_total", "unauthorized"): 0.0,
    ("msgtally_ingest_rejected_total", "too_slow"): 0.0,
    ("msgtally_ingest_rejected_total", "too_large"): 0.0,
    ("msgtally_ingest_rejected_total", "invalid"): 0.0,
    ("msgtally_ingest_rejected_total", "busy"): 0.0,
    ("msgtally_ingest_rejected_total", "store_unavailable"): 0.0,
    ("msgtally_ingest_rejected_total", "other"): 0.0,
}


def test_every_series_is_there_at_zero_before_any_traffic(collector: LiveCollector) -> None:
    assert ingest_samples(collector.url) == ZERO


def test_records_accepted_then_counted_new_or_repeated(
    store: Engine, collector: LiveCollector
) -> None:
    batch = [rec("m1"), rec("m1", "consume"), rec("m2", record_id="r-2")]
    httpx.post(f"{collector.url}/v1/records", json=batch).raise_for_status()
    again = [*batch, rec("m3")]  # three repeats, one new record
    httpx.post(f"{collector.url}/v1/records", json=again).raise_for_status()
    got = ingest_samples(collector.url)
    assert got == {**ZERO, ("msgtally_ingest_records_total", "accepted"): 7.0}
    reconcile(store, ReconcileConfig(), now=T0 + 1000)
    text = httpx.get(f"{collector.url}/metrics").text
    engine_counts = {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "msgtally_reconcile_records_total"
    }
    assert engine_counts == {"new": 4.0, "repeat": 3.0}


def test_refused_requests_by_reason_count_no_records(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_body=4096) as live:
        post = f"{live.url}/v1/records"
        json_header = {"content-type": "application/json"}
        assert httpx.post(post, content=b"", headers=json_header).status_code == 400
        assert httpx.post(post, content=b"[{", headers=json_header).status_code == 400
        assert httpx.post(post, json=[rec("m", ts=-1)]).status_code == 422
        assert httpx.post(post, json=[rec(f"m{i}") for i in range(200)]).status_code == 413
        got = ingest_samples(live.url)
    assert got == {
        **ZERO,
        ("msgtally_ingest_rejected_total", "malformed"): 2.0,
        ("msgtally_ingest_rejected_total", "invalid"): 1.0,
        ("msgtally_ingest_rejected_total", "too_large"): 1.0,
    }


def test_a_store_that_is_down_counts_as_store_unavailable(tmp_path: Any) -> None:
    db = tmp_path / "gone.db"
    store = open_store(str(db))
    app = create_app(store, ReconcileConfig())
    with BackgroundServer(app) as live:
        db.unlink()
        db.mkdir()  # the path now cannot be opened as a database
        store.dispose()  # and the open connections are gone with it
        assert httpx.post(f"{live.url}/v1/records", json=[rec("m1")]).status_code == 503
    store.dispose()
    # /metrics cannot read the tallies from a store that is gone: read the ingest counters.
    names = ["msgtally_ingest_records_total", "msgtally_ingest_rejected_total"]
    text = generate_latest(app.state.registry.restricted_registry(names)).decode()
    got = {
        (s.name, next(iter(s.labels.values()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert got == {**ZERO, ("msgtally_ingest_rejected_total", "store_unavailable"): 1.0}
