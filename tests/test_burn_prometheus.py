"""The status page's burn rates against a real Prometheus's, over the same traffic.

A real collector under steady traffic (one id in ten lost), scraped every
second by a real Prometheus evaluating the generated rules (a 12h period: a
1m/5s fast-burn pair). Once the window is full, the burn rate the page reads
from the per-minute rows and the one Prometheus records from the counters
agree within 1 %. Why they may differ at all: the page's window is whole
minutes (the current one included, a 5s window is that minute), and
`increase()` extrapolates to the window's edges; both sides of the ratio
are extrapolated alike, so a steady ratio survives it, while a ratio that
changes within the window is weighted differently by each.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgtally.alerts.render import render_rules
from msgtally.alerts.rules import generate
from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.spec.budget import error_budget
from msgtally.slis.spec.load import load_spec
from msgtally.status.model import objectives
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.promserver import Prometheus

pytestmark = pytest.mark.slow

SPEC = """\
version: msgtally/v1
service: agree
period: 12h
scrape_interval: 1s
slos:
  - {name: lossy, stream: lossy, group: workers, sli: delivery, objective: 99}
"""


def _traffic(url: str, stop: threading.Event) -> None:
    ids = itertools.count()
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            now = time.time()
            records: list[dict[str, Any]] = []
            for _ in range(40):
                n = next(ids)
                records.append({"stream": "lossy", "kind": "produce", "message_id": f"m{n}",
                                "ts": now})  # fmt: skip
                if n % 10:
                    records.append({"stream": "lossy", "kind": "consume", "message_id": f"m{n}",
                                    "group": "workers", "ts": now + 0.01})  # fmt: skip
            client.post("/v1/records", json=records).raise_for_status()
            stop.wait(0.2)


def test_burn_rates_agree_with_prometheus(tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(generate(spec), spec.service))
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    budget = error_budget(99)
    stop = threading.Event()
    config = ReconcileConfig(deadline=1.0, settle=0.0)
    with LiveCollector(store, config, reconcile_interval=0.25) as collector:
        traffic = threading.Thread(target=_traffic, args=(collector.url, stop), daemon=True)
        traffic.start()
        try:
            with Prometheus(tmp_path, collector.url.removeprefix("http://"), rules) as prom:
                time.sleep(70)  # the 1m window full
                compared = []
                while len(compared) < 5:
                    if time.time() % 60 < 20:  # the page's current minute: 20 s of traffic
                        time.sleep(1)
                        continue
                    result = prom.query('msgtally:sli_error:ratio_rate1m{slo="lossy"}')
                    now = time.time()
                    with store.connect() as conn:
                        (row,) = objectives(conn, spec, now)
                    pair = row.burns[0]
                    assert (pair.long, pair.short) == (60, 5)
                    theirs = float(result[0]["value"][1]) / budget
                    ours = pair.long_burn
                    assert ours is not None
                    compared.append((ours, theirs))
                    time.sleep(2)
        finally:
            stop.set()
            traffic.join(15)
    store.dispose()
    print("\nburn rate over 1m (page, Prometheus):",
          ", ".join(f"({a:.3f}, {b:.3f})" for a, b in compared))  # fmt: skip
    for ours, theirs in compared:
        assert ours == pytest.approx(10.0, rel=0.02)  # one in ten lost, budget 1 %
        assert abs(ours - theirs) <= 0.01 * theirs, compared
