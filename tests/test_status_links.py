"""Where the status page links out: the generated alerts' state read from a real
Prometheus, and Grafana links that open the boards `msgtally dashboards` makes.

The alert state test gives a real Prometheus the page alert `msgtally alerts`
generates for one SLO, labels as generated, with its condition replaced by
`vector(1)` so that it fires at the first evaluation: what it proves is that
the page reads ALERTS by the labels the generated rules carry (alert name,
service, slo, severity), per SLO, and says so when Prometheus does not answer.
That the burn conditions themselves fire at the right time is proved by the
promtool tests and tests/test_burn_prometheus.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from msgtally.alerts.rules import generate
from msgtally.dashboards.build import BOARDS, build
from msgtally.names import BURN_ALERT
from msgtally.reconcile.config import ReconcileConfig
from msgtally.server import free_port
from msgtally.slis.spec.load import load_spec
from msgtally.slis.spec.model import Spec
from msgtally.status.pages import Links
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.promserver import Prometheus

SPEC = """\
version: msgtally/v1
service: shop
period: 1d
scrape_interval: 15s
slos:
  - {name: orders-billing, stream: orders, group: billing, sli: delivery, objective: 99}
  - {name: events-delivery, stream: events, sli: delivery, objective: 99.9}
"""


def _spec() -> Spec:
    return load_spec(SPEC)


def _cell(html: str, key: str, field: str) -> str:
    """The text of one cell of the list's row `key`."""
    row = re.search(rf'<tr class="row[^"]*" data-key="{re.escape(key)}".*?</tr>', html, re.S)
    assert row, f"no row {key!r}"
    cell = re.search(rf'<td data-field="{field}">(.*?)</td>', row.group(0), re.S)
    assert cell, f"no cell {field!r} in row {key!r}"
    return re.sub(r"<[^>]+>", " ", cell.group(1))


def _firing_page_rule(spec: Spec, slo: str) -> dict[str, object]:
    """The generated page alert of `slo` (its fastest window), forced to fire."""
    for group in generate(spec)["groups"]:
        for rule in group["rules"]:
            labels = rule.get("labels", {})
            if (rule.get("alert") == BURN_ALERT and labels.get("slo") == slo
                    and labels.get("severity") == "page"):  # fmt: skip
                return {**rule, "expr": "vector(1)", "keep_firing_for": "0s"}
    raise AssertionError(f"no page alert generated for {slo}")


def _wait_firing(prom: Prometheus, slo: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        prom.check_running()
        got = prom.get("query", query=f'ALERTS{{slo="{slo}",alertstate="firing"}}')
        if got.get("data", {}).get("result"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the alert of {slo} never fired: {prom.log()[-2000:]}")


@pytest.mark.slow
def test_the_list_shows_each_slo_s_alert_state_from_prometheus(tmp_path: Path) -> None:
    spec = _spec()
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(
        {"groups": [{"name": "forced", "rules": [_firing_page_rule(spec, "orders-billing")]}]}
    ))  # fmt: skip
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    target = f"127.0.0.1:{free_port()}"  # nothing to scrape: the alert needs no series
    with Prometheus(tmp_path, target, rules) as prom:
        _wait_firing(prom, "orders-billing")
        links = Links(prometheus=prom.api)
        with LiveCollector(store, ReconcileConfig(), spec=spec, links=links) as live:
            html = httpx.get(f"{live.url}/").text
            assert _cell(html, "orders-billing", "alerts").split() == [
                "page:", "firing", "ticket:", "ok"]  # fmt: skip
            assert _cell(html, "events-delivery", "alerts").split() == [
                "page:", "ok", "ticket:", "ok"]  # fmt: skip
            tiles = httpx.get(f"{live.url}/ui/slo/orders-billing/tiles").text
            states = re.findall(r'<tr data-window="[^"]*"><td>(page|ticket)</td>.*?'
                                r"<td>(firing|pending|ok)</td></tr>", tiles)  # fmt: skip
            assert states and all(state == ("firing" if sev == "page" else "ok")
                                  for sev, state in states), states  # fmt: skip
    # Prometheus gone: the page says it cannot tell, and why, rather than "ok".
    with LiveCollector(store, ReconcileConfig(), spec=spec, links=links) as live:
        html = httpx.get(f"{live.url}/").text
    cell = re.search(r'<td data-field="alerts"><span class="warn" title="([^"]*)">\?</span>', html)
    assert cell and "did not answer" in cell.group(1)
    store.dispose()


def test_grafana_links_open_the_boards_msgtally_dashboards_makes(tmp_path: Path) -> None:
    spec = _spec()
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    links = Links(grafana="https://grafana.example/")
    with LiveCollector(store, ReconcileConfig(), spec=spec, links=links) as live:
        html = httpx.get(f"{live.url}/slo/orders-billing").text
    hrefs = re.findall(r'<a class="board" href="([^"]+)">', html)
    uids = [build(spec, board)["uid"] for board in BOARDS]
    assert hrefs == [f"https://grafana.example/d/{u}" for u in uids]
    assert len(set(uids)) == len(BOARDS)
    store.dispose()


def test_the_detail_page_names_what_each_shim_instance_dropped(tmp_path: Path) -> None:
    """Running totals from two instances, resent and raised: the page shows each
    instance's last totals on the SLO's pairs (its produces, its consumes of the
    SLO's group), the largest first, and nothing of other groups or streams."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")

    def report(source: str, *dropped: tuple[str, str, str | None, int]) -> None:
        body = {"records": [], "source": source, "dropped": [
            {"stream": s, "kind": k, **({"group": g} if g else {}), "total": n}
            for s, k, g, n in dropped]}  # fmt: skip
        assert httpx.post(f"{live.url}/v1/records", json=body).status_code == 200

    with LiveCollector(store, ReconcileConfig(), spec=_spec()) as live:
        report("web-1", ("orders", "produce", None, 3), ("orders", "consume", "billing", 5))
        report("web-1", ("orders", "produce", None, 3), ("orders", "consume", "billing", 7))
        report("web-2", ("orders", "consume", "billing", 2), ("orders", "consume", "shipping", 9),
               ("events", "produce", None, 4))  # fmt: skip
        html = httpx.get(f"{live.url}/slo/orders-billing").text
        events = httpx.get(f"{live.url}/ui/slo/events-delivery/tiles").text
    table = re.search(r'<table class="loss" id="dropped-by">.*?</table>', html, re.S)
    assert table
    rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
            for tr in re.findall(r"<tr>(<td.*?)</tr>", table.group(0))]  # fmt: skip
    assert rows == [["web-1", "consume", "billing", "7"], ["web-1", "produce", "-", "3"],
                    ["web-2", "consume", "billing", "2"]]  # fmt: skip
    assert re.findall(r'<td class="mid">(web-\d)</td><td>(\w+)</td><td>[^<]*</td><td>(\d+)',
                      events) == [("web-2", "produce", "4")]  # fmt: skip
    store.dispose()
