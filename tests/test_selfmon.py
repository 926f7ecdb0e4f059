"""The rules that watch msgtally itself: their shape, their job, and a real Prometheus.

The promtool tests of every example (`*.self.test.yml`) prove each rule's
timing with missed scrapes; here a real Prometheus scrapes a real collector
whose engine does not run (records wait: the stall is pending at once), then
the collector stops (the collector-down alert is pending at once).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from msgtally.alerts import selfmon
from msgtally.alerts.render import render_rules
from msgtally.alerts.rules import generate
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.slis.spec.load import check_spec, load_spec
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.promserver import Prometheus

SPEC = """\
version: msgtally/v1
service: svc
scrape_interval: 1s
labels: {team: t}
slos:
  - {name: d, stream: orders, sli: delivery, objective: 99}
"""


def self_group(text: str = SPEC) -> list[dict[str, Any]]:
    spec = load_spec(text)
    (group,) = [g for g in generate(spec)["groups"] if g["name"] == "msgtally-svc-self"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_the_rules_their_severities_and_durations() -> None:
    got = [
        (r["alert"], r["labels"]["severity"], r.get("for"), r.get("keep_firing_for"))
        for r in self_group()
    ]
    assert got == [
        ("MsgtallyCollectorDown", "page", "5m", "2s"),
        ("MsgtallyReconcileStalled", "page", "2m", "2s"),
        ("MsgtallyReconcileBacklogGrowing", "ticket", "15m", None),
        ("MsgtallyLogRowsQuarantined", "ticket", None, None),
        ("MsgtallyMeasurementLoss", "ticket", None, None),
        ("MsgtallyMeasurementLoss", "ticket", None, None),
    ]
    for rule in self_group():
        assert rule["labels"]["service"] == "svc" and rule["labels"]["team"] == "t"
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])
    losses = [r["labels"]["loss"] for r in self_group() if r["alert"] == selfmon.MEASUREMENT_LOSS]
    assert losses == ["dropped", "missing"]


def test_every_series_is_the_collector_job_and_the_job_is_configurable() -> None:
    def selectors(rules: list[dict[str, Any]]) -> set[str]:
        return {m for r in rules for m in re.findall(r"\{([^}]*)\}", r["expr"])}

    assert selectors(self_group()) == {'job="msgtally"'}
    other = SPEC.replace("service: svc\n", "service: svc\ncollector_job: msgtally-prod\n")
    assert selectors(self_group(other)) == {'job="msgtally-prod"'}
    # windows of four scrape intervals at least: 1m at 15 s
    slow = SPEC.replace("scrape_interval: 1s", "scrape_interval: 15s")
    exprs = " ".join(r["expr"] for r in self_group(slow))
    assert set(re.findall(r"\[(\w+)\]", exprs)) == {"1m", "5m", "15m"}


def test_slo_names_of_msgtallys_own_groups_are_refused() -> None:
    for name in ("self", "contracts"):
        (problem,) = check_spec(SPEC.replace("name: d", f"name: {name}"))
        assert (problem.line, problem.field) == (6, "slos[0].name")
        assert "names a rule group of msgtally's own" in problem.message
    (problem,) = check_spec(SPEC.replace("labels: {team: t}", "labels: {loss: x}"))
    assert problem.field == "labels.loss"


def test_every_series_the_rules_read_is_exposed_by_the_collector(
    store: Engine, collector: LiveCollector
) -> None:
    body = {
        "records": [{"stream": "orders", "kind": "produce", "ts": 1.7e9, "message_id": "m1"}],
        "source": "shim",
        "dropped": [{"stream": "orders", "kind": "produce", "total": 1}],
        "sequences": [{"producer": "shim", "stream": "orders", "kind": "produce", "last": 2}],
    }
    httpx.post(f"{collector.url}/v1/records", json=body).raise_for_status()
    reconcile(store, ReconcileConfig(), now=1.7e9 + 10_000)
    exposed = set(re.findall(r"^(msgtally_\w+)", httpx.get(f"{collector.url}/metrics").text, re.M))
    used = {n for r in self_group() for n in re.findall(r"\b(msgtally_\w+)", r["expr"])}
    # The quarantine gauge comes with the engine's quarantine (another branch).
    assert used - exposed <= {selfmon.QUARANTINED}, used - exposed


def _alerts(prom: Prometheus, name: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = prom.get("alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name]


def _wait(prom: Prometheus, name: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prom.check_running()
        found = _alerts(prom, name)
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {name} within {timeout:.0f}s: {prom.get('alerts')}")


@pytest.mark.slow  # a real Prometheus (or Alertmanager) end to end: with the slow tests
def test_a_real_prometheus_sees_a_stalled_engine_then_a_collector_down(tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(generate(spec), spec.service))
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    collector = LiveCollector(store, ReconcileConfig())  # no engine runs: records wait
    collector.__enter__()
    try:
        record = {"stream": "orders", "kind": "produce", "ts": time.time(), "message_id": "m"}
        httpx.post(f"{collector.url}/v1/records", json=[record]).raise_for_status()
        target = collector.url.removeprefix("http://")
        with Prometheus(tmp_path, target, rules) as prom:
            (stalled,) = _wait(prom, selfmon.STALLED)
            assert stalled["state"] == "pending"  # for 2m: pending, then it pages
            assert stalled["labels"]["job"] == "msgtally"  # never passed: absent_over_time
            assert not _alerts(prom, selfmon.COLLECTOR_DOWN)
            collector.__exit__()
            (down,) = _wait(prom, selfmon.COLLECTOR_DOWN)
            assert down["state"] == "pending"
            assert down["labels"]["instance"] == target
            assert down["annotations"]["summary"] == (
                f"msgtally collector {target} (job msgtally) is down"
            )
    finally:
        collector.__exit__()
        store.dispose()
