"""The status page in a real headless Chromium (Playwright), through a real collector.

A history with known figures (the oracle's) is judged minute by minute, then
a live collector serves it: every number on the list and detail pages equals
/v1/slis?since= and the oracle; a lost id listed is the one injected, its
trace link the template filled in; a new loss shows on an open page without
a reload; no console errors. The page's weight and time to first render are
printed, and the screenshots in docs/images/ are taken here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from msgtally.alerts.windows import spec_windows
from msgtally.auth import COOKIE
from msgtally.oracle import Record, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler
from msgtally.slis.spec import budget
from msgtally.slis.spec.load import load_spec
from msgtally.status.pages import Links
from msgtally.store.db import open_store
from tests.conftest import LiveCollector, service_unavailable
from tests.harness import ingest

pytestmark = pytest.mark.slow

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
SPEC = """\
version: msgtally/v1
service: shop
period: 1d
scrape_interval: 15s
slos:
  - {name: orders-billing, stream: orders, group: billing, sli: delivery, objective: 99}
  - {name: orders-dups, stream: orders, sli: duplicates, objective: 95}
  - {name: events-delivery, stream: events, sli: delivery, objective: 99.9}
contracts:
  - {stream: orders, semantics: at-least-once}
  - {stream: events, semantics: exactly-once}
"""
TRACE = "http://jaeger.test:16686/trace/{trace_id}"
MINUTES = 40
HISTORY = ReconcileConfig(deadline=60.0, settle=0.0, remember=0.0)
LIVE = ReconcileConfig(deadline=1.0, settle=0.0, remember=0.0)
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]  # fmt: skip


def trace_of(n: int) -> str:
    return f"{n:032x}"


def history(base: float) -> list[list[Record]]:
    """Per minute: 20 orders (every 25th lost for billing, every 10th delivered twice to
    shipping), 10 events (one id lost in minute 30, one delivered twice in minute 12)."""
    out = []
    n = 0
    for m in range(MINUTES):
        batch = []
        for k in range(20):
            mid, at = f"o{n}", base + m * 60 + k * 2
            batch.append(Record("orders", "produce", mid, at, trace_id=trace_of(n)))
            if n % 25 != 7:
                batch.append(Record("orders", "consume", mid, at + 0.3, "billing"))
            batch.append(Record("orders", "consume", mid, at + 0.4, "shipping"))
            if n % 10 == 3:
                batch.append(Record("orders", "consume", mid, at + 3, "shipping", attempt=2))
            n += 1
        for k in range(10):
            mid, at = f"e{m}-{k}", base + m * 60 + k * 5
            trace = trace_of(10**6 + m * 10 + k)
            batch.append(Record("events", "produce", mid, at, trace_id=trace))
            if (m, k) != (30, 4):
                batch.append(Record("events", "consume", mid, at + 0.2, "sink"))
            if (m, k) == (12, 1):
                batch.append(Record("events", "consume", mid, at + 4, "sink", attempt=2))
        out.append(batch)
    return out


@pytest.fixture
def browser() -> Iterator[Any]:
    if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
        service_unavailable("chromium not installed (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_unavailable("playwright not installed (the test extra)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture
def judged(tmp_path: Path) -> Iterator[tuple[Engine, list[Record], float]]:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    base = (time.time() - MINUTES * 60 - 120) // 60 * 60
    records: list[Record] = []
    with Reconciler(store, HISTORY) as engine:
        for m, batch in enumerate(history(base)):
            ingest(store, batch, received_at=base + m * 60 + 1)
            records += batch
            engine.tick(base + m * 60 + 59)
        engine.tick(time.time() - 5)
    yield store, records, base
    store.dispose()


def _cells(page: Any, key: str) -> dict[str, str]:
    row = page.locator(f'tr.row[data-key="{key}"]')
    return {f: row.locator(f'[data-field="{f}"]').first.inner_text().strip()
            for f in ("errors", "total", "success", "in_flight")}  # fmt: skip


DRAWN = "Number(document.getElementById('graphs').dataset.drawn) - performance.timeOrigin"


def _timing(page: Any) -> str:
    """Time to first paint and to the loaded page, as the browser measured them."""
    t = page.evaluate("""() => {
        const paint = performance.getEntriesByType('paint').map(e => [e.name, e.startTime]);
        const nav = performance.getEntriesByType('navigation')[0];
        return {paint: Object.fromEntries(paint), dcl: nav.domContentLoadedEventEnd,
                load: nav.loadEventEnd, bytes: nav.transferSize};
    }""")
    fp = t["paint"].get("first-contentful-paint", t["paint"].get("first-paint"))
    fp_text = "n/a" if fp is None else f"{fp:.0f} ms"
    return (f"first paint {fp_text}, DOMContentLoaded {t['dcl']:.0f} ms, load {t['load']:.0f} ms"
            f" (scripts and styles included)")


def _pct(x: float, digits: int) -> str:
    return f"{100 * x:.{digits}f}%"


def test_every_number_on_the_page_is_the_store_s_and_the_oracle_s(
    browser: Any, judged: tuple[Engine, list[Record], float]
) -> None:
    store, records, base = judged
    spec = load_spec(SPEC)
    truth = oracle(records, deadline=60.0)
    links = Links(trace=TRACE)
    with LiveCollector(store, LIVE, spec=spec, links=links, reconcile_interval=0.25) as live:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        # Windows slide by the minute: start early in one, so the page and the
        # /v1/slis reads below see the same minutes.
        if time.time() % 60 > 40:
            time.sleep(61 - time.time() % 60)
        html = httpx.get(live.url + "/").content
        page.goto(live.url + "/")
        print(f"\nstatus page, list: HTML {len(html)} bytes, {_timing(page)}")
        first_minute = base
        slis = httpx.get(live.url + "/v1/slis", params={"since": "1d"}).json()
        by_pair = {(s["stream"], s["group"]): s for s in slis}

        # orders-billing: delivery of orders to billing
        got = _cells(page, "orders-billing")
        b = by_pair[("orders", "billing")]
        lost, produced = truth[("orders", "billing")].counts["lost"], b["produced"]
        assert (b["lost"], produced) == (lost, truth[("orders", "billing")].counts["produced"])
        assert (int(got["errors"]), int(got["total"])) == (lost, produced) and lost == 32
        assert got["success"] == _pct(1 - lost / produced, 3)
        # budget: the period's errors allowed at the traffic rate seen so far
        row = page.locator('tr.row[data-key="orders-billing"]')
        elapsed = float(row.get_attribute("data-elapsed") or 0)
        assert abs(elapsed - (time.time() - first_minute)) < 30
        allowed = budget.period_budget(produced, elapsed, 86_400, 99)
        shown_left = row.locator('[data-field="budget_left"]').inner_text()
        assert shown_left == _pct(1 - lost / allowed, 1)
        assert int(row.locator('[data-field="may_still_lose"]').inner_text()) == int(allowed - lost)
        # burn per window pair: the same ratio /v1/slis gives over each window
        for w in spec_windows(spec):
            cell = row.locator(f'[data-window="{w.long_text}/{w.short_text}"]')
            for field, text in (("burn_long", w.long_text), ("burn_short", w.short_text)):
                pair = [s for s in httpx.get(live.url + "/v1/slis",
                        params={"since": text, "stream": "orders", "group": "billing"}).json()]
                want = "-"
                if pair and pair[0]["produced"]:
                    want = f"{pair[0]['lost'] / pair[0]['produced'] / 0.01:.2f}x"
                assert cell.locator(f'[data-field="{field}"]').inner_text() == want, (w, field)

        # orders-dups: duplicates over every group of orders
        got = _cells(page, "orders-dups")
        dups = sum(truth[("orders", g)].counts["duplicated"] for g in ("billing", "shipping"))
        oks = sum(truth[("orders", g)].counts[c] for g in ("billing", "shipping")
                  for c in ("delivered", "late", "recovered", "duplicated"))  # fmt: skip
        assert (int(got["errors"]), int(got["total"])) == (dups, oks) and dups == 80
        # events: an exactly-once contract, one loss and one duplicate: BREACHED 2
        contract = page.locator('tr.row[data-key="events-delivery"] [data-field="contract"]')
        assert "BREACHED 2" in contract.inner_text()
        got = _cells(page, "events-delivery")
        assert (int(got["errors"]), int(got["total"])) == (1, MINUTES * 10)
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / "status-list.png"), full_page=True)

        # The detail page: the same figures, the lost id injected, its trace link.
        page.goto(live.url + "/slo/events-delivery?range=1h")
        page.wait_for_selector("#graphs[data-drawn]", timeout=10_000)
        detail = httpx.get(live.url + "/slo/events-delivery?range=1h").content
        drawn = page.evaluate(DRAWN)
        print(f"status page, detail: HTML {len(detail)} bytes, {_timing(page)}, graphs drawn "
              f"{drawn:.0f} ms after navigation")
        tiles = page.locator("#tiles")
        assert tiles.locator('[data-field="errors"]').first.inner_text() == "1"
        assert tiles.locator('[data-field="total"]').first.inner_text() == str(MINUTES * 10)
        lost_rows = page.locator('table.ids[data-kind="lost"] tbody tr')
        assert lost_rows.count() == 1
        assert lost_rows.locator("td.mid").inner_text() == "e30-4"
        link = lost_rows.locator("a.trace").get_attribute("href")
        assert link == TRACE.format(trace_id=trace_of(10**6 + 304))
        assert "range=1h" in page.url and page.locator('.presets a.on').inner_text() == "1h"
        page.screenshot(path=str(IMAGES / "status-detail.png"), full_page=True)

        # A new loss shows on the open page within 5 s, without a reload.
        now = time.time()
        httpx.post(live.url + "/v1/records", json=[
            {"stream": "events", "kind": "produce", "message_id": "fresh-loss", "ts": now,
             "trace_id": trace_of(424242)}]).raise_for_status()  # fmt: skip
        page.wait_for_selector('table.ids[data-kind="lost"] td.mid:text-is("fresh-loss")',
                               timeout=5_000)  # fmt: skip
        assert page.locator("#tiles [data-field='errors']").first.inner_text() == "2"
        assert not problems, problems


def test_a_token_is_asked_once_and_kept_in_a_cookie_for_the_page_only(
    browser: Any, judged: tuple[Engine, list[Record], float], tmp_path: Path
) -> None:
    store, _records, _base = judged
    with LiveCollector(store, LIVE, spec=load_spec(SPEC), token="s3cret") as live:
        page = browser.new_page()
        page.goto(live.url + "/slo/orders-billing")
        assert "/ui/login" in page.url
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        assert "not valid" in page.inner_text("body")
        page.fill("input[name=token]", "s3cret")
        page.click("button[type=submit]")
        page.wait_for_selector("#tiles")
        assert page.url.endswith("/slo/orders-billing")
        (cookie,) = [c for c in page.context.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        # The cookie opens the page and its partials, never the API.
        jar = {COOKIE: "s3cret"}
        assert httpx.get(live.url + "/ui/list", cookies=jar).status_code == 200
        assert httpx.get(live.url + "/v1/slis", cookies=jar).status_code == 401
        assert httpx.get(live.url + "/metrics", cookies=jar).status_code == 401
    with LiveCollector(store, LIVE, token="s3cret", ui_open=True) as live:
        assert httpx.get(live.url + "/").status_code == 200
        assert httpx.get(live.url + "/v1/slis").status_code == 401
