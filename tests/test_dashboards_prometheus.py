"""Every panel query of the generated dashboards, against a real Prometheus and collector.

A real collector takes traffic on two streams and two consumer groups with
every kind of discrepancy (loss, duplicates, retries, dead letters, consume
errors and failed sends with their error classes, unexpected and recovered
ids, latency, shim drops, refused requests); a real Prometheus scrapes it
every second with the rules that `msgtally alerts` generates from the same
spec (a 12h period: windows of seconds and minutes). Then each panel target's PromQL, with Grafana's
variables substituted as Grafana would, goes to Prometheus's query API, as
an instant or a range query like the panel's: it must parse and return data.
The `orders`/`billing` pair loses half its messages, so the page alert
fires and the "Firing alerts" table has rows too.

Prometheus scrapes the collector under two job names, as it would two
collectors behind a load balancer (both read one store): every tally comes
in two label sets. The panels must still give one series per stream or pair,
counted once.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from msgtally.alerts.render import render_rules
from msgtally.alerts.rules import generate as generate_rules
from msgtally.dashboards.build import generate
from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.spec.load import load_spec
from msgtally.slis.spec.model import Spec
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.promserver import Prometheus

SPEC = """\
version: msgtally/v1
service: e2e
period: 12h
scrape_interval: 1s
slos:
  - {name: orders-delivery, stream: orders, group: billing, sli: delivery, objective: 99}
  - {name: orders-duplicates, stream: orders, sli: duplicates, objective: 99}
  - {name: orders-latency, stream: orders, group: shipping, sli: latency, threshold: 0.5,
     objective: 95}
  - {name: payments-retries, stream: payments, group: billing, sli: retries, objective: 98}
  - {name: payments-delivery, stream: payments, sli: delivery, objective: 99}
contracts:
  - {stream: orders, semantics: at-least-once}
"""
STREAMS = ("orders", "payments")
GROUPS = ("billing", "shipping")
SCRAPE = 1  # seconds, Prometheus's scrape and evaluation interval (tests.promserver)
INTERVAL = 5  # seconds: Grafana's $__interval for a panel without a minimum interval
RANGE = 60  # seconds: the dashboard's time range in $__range and the range queries
WAIT = 120.0  # seconds, at most, for every query to return data
# The variables as Grafana fills them in: one stream and group, and All.
SELECTIONS = {
    "orders/billing": ("orders", "billing"),
    "All": ("(orders|payments)", "(billing|shipping)"),
}


def _records(n: int, now: float) -> list[dict[str, Any]]:
    """Ten ids per stream, every kind of discrepancy; deadlines are 1 s."""
    out: list[dict[str, Any]] = []
    for stream, i in itertools.product(STREAMS, range(n, n + 10)):
        mid = f"{stream}-{i}"
        out.append({"stream": stream, "kind": "produce", "message_id": mid, "ts": now,
                    "attempt": 2 if i % 5 == 0 else 1,  # retried; an error produce is recovered
                    "outcome": "error" if i % 9 == 0 else "ok",
                    **({"error": "auth" if i % 2 else "timeout"} if i % 9 == 0 else {}),
                    })  # fmt: skip
        for group in GROUPS:
            if stream == "orders" and group == "billing" and i % 2:
                continue  # lost: half of orders never reach billing
            late = now + 0.05 + (i % 10) * 0.08  # latency 0.05 .. 0.77 s
            consume = {"stream": stream, "kind": "consume", "message_id": mid, "group": group}
            if group == "shipping" and i % 7 == 0:
                out.append({**consume, "ts": late, "outcome": "dead_letter", "error": "poison"})
                continue
            if i % 6 == 0:  # a processing failure, then a redelivery
                out.append({**consume, "ts": late - 0.01, "outcome": "error",
                            "error": "serialization"})  # fmt: skip
                out.append({**consume, "ts": late, "attempt": 2})
            else:
                out.append({**consume, "ts": late})
            if group == "shipping" and i % 4 == 0:  # delivered twice
                out.append({**consume, "ts": late + 0.01})
        if i % 3 == 0:  # consumed, never produced
            out.append({"stream": stream, "kind": "consume", "message_id": f"ghost-{mid}",
                        "group": "billing", "ts": now})  # fmt: skip
    return out


def _traffic(url: str, stop: threading.Event) -> None:
    batches = itertools.count()
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            n = next(batches)
            body = {
                "records": _records(n * 10, time.time()),
                "source": "test-shim",
                "dropped": [
                    {"stream": "orders", "kind": "produce", "total": n},
                    {"stream": "payments", "kind": "consume", "group": "billing", "total": n},
                ],
                # Marks past what was numbered (nothing is): records missing, every kind.
                "sequences": [
                    {"producer": "test-shim", "stream": "orders", "kind": "produce",
                     "last": n + 1},
                    {"producer": "test-shim", "stream": "payments", "kind": "consume",
                     "group": "billing", "last": n + 1},
                ],
                # A consumer acking before processing on an at-least-once stream.
                "retry_configs": [
                    {"stream": "orders", "group": "billing", "acks": "before",
                     "max_attempts": 5},
                ],
            }  # fmt: skip
            client.post("/v1/records", json=body).raise_for_status()
            # Refused requests: one invalid record, one body that is not JSON.
            assert client.post("/v1/records", json=[{"stream": "orders"}]).status_code == 422
            assert client.post("/v1/records", content=b"[{").status_code == 400
            stop.wait(0.2)


def _seconds(text: str) -> int:
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", text))


def substitute(expr: str, stream: str, group: str, min_interval: str | None) -> tuple[str, int]:
    """Grafana's interpolation for a Prometheus with a 1 s scrape interval; (PromQL, step)."""
    interval = max(INTERVAL, _seconds(min_interval) if min_interval else 0)
    rate_interval = max(interval + SCRAPE, 4 * SCRAPE)  # Grafana's $__rate_interval
    out = (
        expr.replace("$__rate_interval", f"{rate_interval}s")
        .replace("$__range", f"{RANGE}s")
        .replace("$__interval", f"{interval}s")
        .replace("$stream", stream)
        .replace("$group", group)
    )
    assert "$" not in out, f"a variable left in {out}"
    return out, interval


def panel_queries() -> list[tuple[str, str, dict[str, Any], str | None]]:
    """(dashboard, panel title, target, the panel's minimum interval) of every target."""
    out = []
    for name, board in generate(load_spec(SPEC)).items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((name, panel["title"], target, panel.get("interval")))
    return out


def _result(prom: Prometheus, target: dict[str, Any], expr: str, step: int) -> Any:
    """The data of the query as the panel sends it; raises on a PromQL error."""
    if target.get("instant"):
        body = prom.get("query", query=expr)
    else:
        end = time.time()
        body = prom.get("query_range", query=expr, start=end - RANGE, end=end, step=step)
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    if target.get("instant"):
        return result
    return [series for series in result if series["values"]]


def maintenance(now: float) -> str:
    """A one-off maintenance window around now, one a day ago, a weekly one."""

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t - t % 60, UTC).isoformat()

    return (
        "maintenance:\n"
        f"  - {{name: now, start: '{stamp(now - 3600)}', end: '{stamp(now + 3600)}'}}\n"
        f"  - {{name: yesterday, start: '{stamp(now - 90_000)}', end: '{stamp(now - 86_400)}',"
        " streams: [orders]}\n"
        "  - {name: weekly, days: [monday], start: '01:00', end: '02:00', time_zone: UTC}\n"
    )


def _annotations(prom: Prometheus, spec: Spec) -> dict[str, int]:
    """Maintenance annotation queries of every board -> series with data over the range."""
    out: dict[str, int] = {}
    for name, board in generate(spec).items():
        for a in board["annotations"]["list"]:
            if "expr" in a:
                target = {"expr": a["expr"]}
                out[f"{name}: {a['name']}"] = len(_result(prom, target, a["expr"], 60))
            else:
                assert a["target"]["queryType"] == "timeRegions"
    return out


@pytest.mark.slow  # a real Prometheus (or Alertmanager) end to end: with the slow tests
def test_every_panel_query_parses_and_returns_data(tmp_path: Path) -> None:
    spec = load_spec(SPEC + maintenance(time.time()))
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(generate_rules(spec), spec.service))
    queries = panel_queries()
    assert len(queries) > 30

    store: Engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    stop = threading.Event()
    config = ReconcileConfig(deadline=1.0, settle=0.0)
    started = time.monotonic()
    with LiveCollector(store, config, reconcile_interval=0.25, spec=spec) as collector:
        traffic = threading.Thread(target=_traffic, args=(collector.url, stop), daemon=True)
        traffic.start()
        try:
            target = collector.url.removeprefix("http://")
            with Prometheus(tmp_path, target, rules, jobs=2) as prom:
                missing = _wait_for_data(prom, queries)
                prom.check_running()
                variables = _variable_values(prom, spec.service)
                label_sets, counted = _counted_once(prom, queries)
                annotations = _annotations(prom, spec)
        finally:
            stop.set()
            traffic.join(15)
    store.dispose()
    assert not missing, f"no data within {WAIT:.0f}s:\n" + "\n".join(missing)
    assert variables == {"stream": list(STREAMS), "group": list(GROUPS)}
    # Two label sets per tally (two jobs); the dashboard counts each loss once.
    assert label_sets == 2
    assert 1.6 < counted < 2.4, f"naive sum / dashboard = {counted}: not counted once"
    assert time.monotonic() - started < WAIT + 30
    # The one-off window around now shades the range shown; yesterday's does not.
    assert annotations == {
        f"{board}: Maintenance: {window}": int(window == "now")
        for board in ("executive", "oncall", "debug")
        for window in ("now", "yesterday")
    }


def _wait_for_data(prom: Prometheus, queries: list[Any]) -> list[str]:
    """Query until every panel target returns data; the ones that never did."""
    pending = {
        (label, name, title, target["refId"]): (target, *substitute(target["expr"], s, g, mi))
        for label, (s, g) in SELECTIONS.items()
        for name, title, target, mi in queries
    }
    deadline = time.monotonic() + WAIT
    while pending and time.monotonic() < deadline:
        prom.check_running()
        for key, (target, expr, step) in list(pending.items()):
            try:
                data = _result(prom, target, expr, step)
            except ValueError as exc:
                pytest.fail(f"{key}: Prometheus refused the query: {exc}\n{expr}")
            if data:
                del pending[key]
        if pending:
            time.sleep(1)
    return [f"{key}: {expr}" for key, (_, expr, _) in pending.items()]


def _variable_values(prom: Prometheus, service: str) -> dict[str, list[str]]:
    """What the dashboards' `label_values(metric{...}, label)` variables list."""
    board = generate(load_spec(SPEC))["oncall"]
    out = {}
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
        assert match, var["query"]
        selector = match[1].replace("$stream", "(orders|payments)")
        body = prom.get(f"label/{match[2]}/values", **{"match[]": selector})
        assert body["status"] == "success", body
        out[var["name"]] = body["data"]
    return out


def _counted_once(prom: Prometheus, queries: list[Any]) -> tuple[int, float]:
    """(label sets of one tally, naive sum over them / the Top lost panel's figure)."""
    (target,) = [t for _, title, t, _ in queries if title.startswith("Top streams")]
    expr, _ = substitute(target["expr"], "orders", "billing", None)
    ours = prom.query(expr)
    tally = 'msgtally_messages_lost_total{stream="orders",group="billing"}'
    naive = prom.query(f"sum(increase({tally}[{RANGE}s]))")
    (count,) = prom.query(f"count({tally})")
    assert len(ours) == 1, ours  # one series for the pair, not one per job
    return int(count["value"][1]), float(naive[0]["value"][1]) / float(ours[0]["value"][1])
