"""In flight in sight: the ids produced and not judged yet, per stream and
group, and how long the oldest has waited, beside figures that count judged
ids only."""

from __future__ import annotations

import httpx
from sqlalchemy import Engine

from msgtally.names import IN_FLIGHT, IN_FLIGHT_OLDEST
from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.read.query import read_slis
from tests.conftest import LiveCollector
from tests.harness import T, consume, ingest, produce, run

CONFIG = ReconcileConfig()  # deadline 300 s


def test_ids_under_way_are_beside_the_judged_figures(store: Engine) -> None:
    ingest(store, [
        produce("s", "done", 0), consume("s", "done", "g", 1),
        produce("s", "a", 5), produce("s", "b", 7),
        consume("s", "b", "g", 8, outcome="error"),  # delivered, not ok: still under way
        produce("quiet", "q", 20), consume("quiet", "x", "h", 21),  # h expects every id of quiet
    ])  # fmt: skip
    run(store, CONFIG, 30)  # before any deadline: only the in-time delivery is judged
    with store.connect() as conn:
        slis = {(s.stream, s.group): s for s in read_slis(conn, now=T + 50)}
    g = slis[("s", "g")]
    assert (g.produced, g.delivered, g.lost) == (1, 1, 0)  # judged ids only
    assert g.in_flight == 2
    assert g.in_flight_oldest_age_seconds == 45  # "a", produced at +5, as of +50
    h = slis[("quiet", "h")]  # nothing judged yet: the pair shows by its ids in flight
    assert (h.produced, h.in_flight, h.in_flight_oldest_age_seconds) == (0, 1, 30)
    run(store, CONFIG, 1000)  # every deadline passed: nothing under way
    with store.connect() as conn:
        slis = {(s.stream, s.group): s for s in read_slis(conn, now=T + 1000)}
    assert (slis[("s", "g")].lost, slis[("s", "g")].in_flight) == (2, 0)
    assert slis[("s", "g")].in_flight_oldest_age_seconds is None


def test_slis_and_metrics_show_them(store: Engine) -> None:
    ingest(store, [produce("s", "a", 5), produce("s", "b", 9), consume("s", "b", "g", 10)])
    run(store, CONFIG, 12)
    with LiveCollector(store, CONFIG) as live:
        (row,) = httpx.get(f"{live.url}/v1/slis").json()
        metrics = httpx.get(f"{live.url}/metrics").text
    assert (row["delivered"], row["in_flight"]) == (1, 1)
    assert row["in_flight_oldest_age_seconds"] > 0
    assert f'{IN_FLIGHT}{{group="g",stream="s"}} 1.0' in metrics
    assert f'{IN_FLIGHT_OLDEST}{{group="g",stream="s"}} {T + 5:.9e}' in metrics
