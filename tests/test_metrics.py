"""GET /metrics: the tallies in Prometheus form, read from the store."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from tests.conftest import LiveCollector

T0 = 1_700_000_000.0


def rec(mid: str, kind: str = "produce", group: str = "billing", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"stream": "orders", "kind": kind, "message_id": mid, "ts": T0}
    if kind == "consume":
        out["group"] = group
    out.update(extra)
    return out


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"stream": "orders", "group": "billing", **labels}.items()))


HISTORY = [
    rec("m1"),
    rec("m1", "consume", ts=T0 + 0.3),
    rec("m2"),
    rec("m2", "consume", ts=T0 + 2.0),
    rec("m2", "consume", ts=T0 + 3.0, attempt=2),
    rec("m3"),  # lost
    rec("m4"),
    rec("m4", "consume", ts=T0 + 0.05, outcome="error"),
    rec("m4", "consume", ts=T0 + 0.07, attempt=2),
    rec("m5", ts=T0 + 2000),  # in flight at T0 + 2100
]


def test_metrics_reflect_the_store_and_survive_a_restart(store: Engine) -> None:
    config = ReconcileConfig(latency_buckets=(0.1, 1.0, 2.5))
    with LiveCollector(store, config) as live:
        httpx.post(f"{live.url}/v1/records", json=HISTORY).raise_for_status()
        before = scrape(live.url)
        assert before[("msgtally_reconcile_backlog_records", ())] == len(HISTORY)
        reconcile(store, config, now=T0 + 2100)
        m = scrape(live.url)
    assert m[key("msgtally_messages_produced_total")] == 4
    assert m[key("msgtally_messages_delivered_total")] == 3
    assert m[key("msgtally_messages_lost_total")] == 1
    assert m[key("msgtally_messages_duplicated_total")] == 1
    assert m[key("msgtally_messages_retried_total")] == 2
    assert m[key("msgtally_delivery_attempts_total")] == 5
    assert m[key("msgtally_consume_errors_total")] == 1
    assert m[key("msgtally_messages_late_total")] == 0
    assert m[key("msgtally_messages_in_flight")] == 1
    assert m[("msgtally_reconcile_backlog_records", ())] == 0
    assert m[("msgtally_reconcile_last_pass_timestamp_seconds", ())] == T0 + 2100
    # Latencies 0.3, 2.0, 0.07: cumulative buckets.
    assert m[key("msgtally_delivery_latency_seconds_bucket", le="0.1")] == 1
    assert m[key("msgtally_delivery_latency_seconds_bucket", le="1.0")] == 2
    assert m[key("msgtally_delivery_latency_seconds_bucket", le="2.5")] == 3
    assert m[key("msgtally_delivery_latency_seconds_bucket", le="+Inf")] == 3
    assert m[key("msgtally_delivery_latency_seconds_count")] == 3
    # Unix-seconds doubles near 1.7e9 resolve 0.24 microseconds: that is the tolerance.
    assert abs(m[key("msgtally_delivery_latency_seconds_sum")] - 2.37) < 1e-6

    # A new collector process on the same store: the same figures. The ingest
    # counters (msgtally_ingest_*) count what one process took in: they restart at 0.
    def from_store(sample: tuple[str, tuple[tuple[str, str], ...]]) -> bool:
        return "created" not in sample[0] and not sample[0].startswith("msgtally_ingest_")

    with LiveCollector(store, config) as again:
        after = scrape(again.url)
    assert {k: v for k, v in after.items() if from_store(k)} == {
        k: v for k, v in m.items() if from_store(k)
    }


def test_a_group_that_received_nothing_still_shows_its_loss(store: Engine) -> None:
    config = ReconcileConfig(expected_groups={"orders": ("audit",)})
    with LiveCollector(store, config) as live:
        httpx.post(f"{live.url}/v1/records", json=HISTORY[:2]).raise_for_status()
        reconcile(store, config, now=T0 + 1000)
        m = scrape(live.url)
    assert m[key("msgtally_messages_produced_total", group="audit")] == 1
    assert m[key("msgtally_messages_lost_total", group="audit")] == 1
    assert m[key("msgtally_messages_delivered_total")] == 1
