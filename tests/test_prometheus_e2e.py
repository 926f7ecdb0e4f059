"""End to end: a real Prometheus scrapes a real collector and fires the generated page alerts.

A 12h SLO period scales the fast-burn windows to 1m and 5s, so Prometheus
(scrape and rule evaluation every second, declared in the spec: windows of 4s
at least) can see a budget burn within seconds. One stream loses half its
messages, the other none: the page fires for the lossy one only.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from msgtally.alerts.render import render_rules
from msgtally.alerts.rules import generate
from msgtally.alerts.selfmon import ALERTS
from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.spec.load import load_spec
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.promserver import prometheus_binary, start_prometheus, stop_prometheus

SPEC = """\
version: msgtally/v1
service: e2e
period: 12h
scrape_interval: 1s
slos:
  - {name: lossy-delivery, stream: lossy, group: workers, sli: delivery, objective: 99}
  - {name: clean-delivery, stream: clean, group: workers, sli: delivery, objective: 99}
"""
WAIT = 150.0  # seconds, at most, for the page to fire


def _traffic(url: str, stop: threading.Event) -> None:
    """Both streams, current timestamps; every other id of `lossy` is never consumed."""
    ids = itertools.count()
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            now = time.time()
            records: list[dict[str, Any]] = []
            for stream in ("lossy", "clean"):
                for _ in range(20):
                    mid = f"m{next(ids)}"
                    records.append({"stream": stream, "kind": "produce", "message_id": mid,
                                    "ts": now})  # fmt: skip
                    if stream == "clean" or int(mid[1:]) % 2:
                        records.append({"stream": stream, "kind": "consume", "message_id": mid,
                                        "group": "workers", "ts": now + 0.01})  # fmt: skip
            client.post("/v1/records", json=records).raise_for_status()
            stop.wait(0.2)


def _alerts(api: str, name: str = "MsgtallyErrorBudgetBurn") -> list[dict[str, Any]]:
    body = httpx.get(f"{api}/api/v1/alerts", timeout=5).json()
    alerts: list[dict[str, Any]] = body["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name]


@pytest.mark.slow  # a real Prometheus (or Alertmanager) end to end: with the slow tests
def test_page_fires_for_the_lossy_stream_only(tmp_path: Path) -> None:
    binary = prometheus_binary()
    rules = tmp_path / "rules.yml"
    spec = load_spec(SPEC)
    rules.write_text(render_rules(generate(spec), spec.service))

    store: Engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    stop = threading.Event()
    config = ReconcileConfig(deadline=1.0, settle=0.0)
    with (
        open(tmp_path / "prometheus.log", "wb") as log_file,
        LiveCollector(store, config, reconcile_interval=0.25) as collector,
    ):
        traffic = threading.Thread(target=_traffic, args=(collector.url, stop), daemon=True)
        traffic.start()
        target = collector.url.removeprefix("http://")
        proc, api = start_prometheus(binary, tmp_path, target, rules, log_file)
        try:
            fired: list[dict[str, Any]] = []
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    burning = _alerts(api)
                except httpx.HTTPError:
                    burning = []  # not up yet
                fired = [
                    a for a in burning
                    if a["state"] == "firing" and a["labels"]["severity"] == "page"
                    and a["labels"]["slo"] == "lossy-delivery"
                ]  # fmt: skip
                if fired:
                    break
                time.sleep(0.5)
            log = (tmp_path / "prometheus.log").read_text()
            assert proc.poll() is None, f"prometheus exited: {log}"
            assert fired, f"no page for the lossy stream within {WAIT:.0f}s: {_alerts(api)}"
            assert {a["labels"]["burn_window"] for a in fired} <= {"1m", "6m"}
            assert fired[0]["labels"]["stream"] == "lossy"
            # The clean stream is measured (its ratio is 0) and nothing burns for it.
            query = 'msgtally:sli_error:ratio_rate1m{slo="clean-delivery"}'
            clean: list[float] = []
            until = time.monotonic() + 30
            while not clean and time.monotonic() < until:
                result = httpx.get(f"{api}/api/v1/query", params={"query": query}).json()
                clean = [float(r["value"][1]) for r in result["data"]["result"]]
                time.sleep(0.5)
            assert clean == [0.0]
            assert not [a for a in _alerts(api) if a["labels"]["slo"] == "clean-delivery"]
            # A live engine and collector: nothing of the rules on msgtally itself, not even
            # pending; the engine's last pass is a second old or so.
            mine = [a for name in ALERTS for a in _alerts(api, name)]
            assert not mine, mine
            lag = 'time() - max(msgtally_reconcile_last_pass_timestamp_seconds{job="msgtally"})'
            result = httpx.get(f"{api}/api/v1/query", params={"query": lag}).json()
            assert float(result["data"]["result"][0]["value"][1]) < 30
        finally:
            stop.set()
            stop_prometheus(proc)
            traffic.join(15)
    store.dispose()


CONTRACTS = """\
version: msgtally/v1
service: e2e
scrape_interval: 1s
contracts:
  - {stream: pay, semantics: exactly-once}
  - {stream: feed, semantics: at-least-once}
"""


def _duplicating(url: str, stop: threading.Event) -> None:
    """Both streams delivered in full; one id of `pay` and every tenth of `feed` twice."""
    ids = itertools.count()
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            now = time.time()
            records: list[dict[str, Any]] = []
            for stream in ("pay", "feed"):
                for _ in range(10):
                    n = next(ids)
                    twice = (stream == "pay" and n == 200) or (stream == "feed" and n % 10 == 0)
                    records.append({"stream": stream, "kind": "produce", "message_id": f"m{n}",
                                    "ts": now})  # fmt: skip
                    for k in range(1 + twice):
                        records.append({"stream": stream, "kind": "consume", "message_id": f"m{n}",
                                        "group": "workers", "ts": now + 0.01 + k})  # fmt: skip
            client.post("/v1/records", json=records).raise_for_status()
            stop.wait(0.2)


@pytest.mark.slow  # a real Prometheus (or Alertmanager) end to end: with the slow tests
def test_one_duplicate_on_an_exactly_once_stream_pages(tmp_path: Path) -> None:
    binary = prometheus_binary()
    rules = tmp_path / "rules.yml"
    spec = load_spec(CONTRACTS)
    rules.write_text(render_rules(generate(spec), spec.service))
    store: Engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    stop = threading.Event()
    with (
        open(tmp_path / "prometheus.log", "wb") as log_file,
        LiveCollector(store, ReconcileConfig(deadline=1.0, settle=0.0), reconcile_interval=0.25)
        as collector,
    ):
        traffic = threading.Thread(target=_duplicating, args=(collector.url, stop), daemon=True)
        traffic.start()
        proc, api = start_prometheus(
            binary, tmp_path, collector.url.removeprefix("http://"), rules, log_file
        )
        try:
            fired: list[dict[str, Any]] = []
            deadline = time.monotonic() + WAIT
            while not fired and time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(httpx.HTTPError):  # not up yet
                    fired = _alerts(api, "MsgtallyDeliveryContractBreach")
                time.sleep(0.5)
            assert fired, f"no contract page within {WAIT:.0f}s"
            (page,) = fired
            assert page["state"] == "firing"
            assert {k: page["labels"][k] for k in ("stream", "group", "semantics", "breach")} == {
                "stream": "pay", "group": "workers", "semantics": "exactly-once",
                "breach": "duplicate",
            }  # fmt: skip
            assert page["labels"]["severity"] == "page"
            assert float(page["value"]) == 1.0  # the exact count, not an extrapolation
            assert "kind=duplicated&stream=pay&group=workers" in page["annotations"]["description"]
            # feed duplicates all the time, which at-least-once allows: never a page.
            time.sleep(3)
            assert [a["labels"]["stream"] for a in _alerts(api, page["labels"]["alertname"])] == [
                "pay"
            ]
        finally:
            stop.set()
            stop_prometheus(proc)
            traffic.join(15)
    store.dispose()
