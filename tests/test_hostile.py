"""Faults and hostile input against a real collector: poison records, slow and
oversized bodies, authentication, a flood of names, readiness, a shim that
comes back after an outage, a shipper that survives its own errors."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from msgtally.app import create_app
from msgtally.ingest.shim.tally import Tally
from msgtally.reconcile.config import ReconcileConfig
from msgtally.server import BackgroundServer, free_port
from msgtally.slis.read.query import read_drops
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.harness import logged

T0 = 1_700_000_000.0


def rec(mid: str, kind: str = "produce", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"stream": "s", "kind": kind, "message_id": mid, "ts": T0}
    if kind == "consume":
        base["group"] = "g"
    return {**base, **extra}


def total_dropped(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for metric in registry.collect()
        if metric.name == "msgtally_sdk_records_dropped"
        for s in metric.samples
        if s.name.endswith("_total")
    )


# --- poison records from a real shim -------------------------------------------------------


def test_a_poison_record_never_stops_a_shim(store: Engine) -> None:
    """What the collector would refuse is refused at the call; what only the
    collector can refuse (here: a name past the series limit) is dropped, counted,
    and the shim carries on."""
    registry = CollectorRegistry()
    with LiveCollector(store, ReconcileConfig(), max_series=2) as live:
        tally = Tally("s", collector_url=live.url, registry=registry, tracing=False,
                      flush_interval=0.05)  # fmt: skip
        tally.produced("nul\x00id")  # NUL: no store can hold it
        tally.produced("ok-1", ts=10**400)  # an int too large for a float
        tally.produced("ok-2", ts=1.7e12)  # milliseconds, not seconds
        tally.consumed("c-1", group="g", attempt=2**40)  # kept, as attempt 1
        for i in range(200):
            tally.produced(f"m{i}")
        tally.consumed("new", group="one-too-many")  # (s, g) and (s, "") fill the limit
        for i in range(200, 400):
            tally.produced(f"m{i}")
        assert tally.flush(10)
        tally.close()
        got = {r["message_id"] for r in logged(store)}
    assert got == {f"m{i}" for i in range(400)} | {"c-1"}
    assert total_dropped(registry) == 4  # three at the call, one refused by the collector
    with store.connect() as conn:
        assert sum(read_drops(conn).values()) == 4  # and the collector knows


# --- hostile payloads on both stores --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"records": [], "source": "x",
          "dropped": [{"stream": "s", "kind": "produce", "total": 2**63 - 1}]}, 422,
         "dropped[0].total"),
        ({"records": [rec("m", attempt=2**31)]}, 422, "records[0].attempt"),
        ({"records": [rec("m", seq=2**63)]}, 422, "records[0].seq"),
        ({"records": [rec("m", producer="p\x00")]}, 422, "records[0].producer"),
        ({"records": [rec("m", ts=1e10 + 1)]}, 422, "records[0].ts"),
    ],
)  # fmt: skip
def test_numbers_and_characters_no_store_holds_are_4xx(
    store: Engine, collector: LiveCollector, body: dict[str, Any], status: int, field: str
) -> None:
    resp = httpx.post(f"{collector.url}/v1/records", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"]["field"] == field
    assert logged(store) == []


def test_drop_totals_are_bounded_and_summed_without_overflow(
    store: Engine, collector: LiveCollector
) -> None:
    big = 2**40
    for source in ("a", "b", "c"):
        body = {"records": [], "source": source,
                "dropped": [{"stream": "s", "kind": "produce", "total": big}]}  # fmt: skip
        assert httpx.post(f"{collector.url}/v1/records", json=body).status_code == 200
    httpx.post(f"{collector.url}/v1/records", json=[rec("m1"), rec("m1", "consume")])
    assert httpx.get(f"{collector.url}/v1/slis").status_code == 200
    assert httpx.get(f"{collector.url}/metrics").status_code == 200
    with store.connect() as conn:
        assert read_drops(conn) == {("s", "produce", ""): 3 * big}


# --- bodies ---------------------------------------------------------------------------------


def _raw(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def test_a_stalled_body_is_refused_and_held_bytes_are_bounded(store: Engine) -> None:
    app = create_app(store, ReconcileConfig(), read_timeout=1.0, max_inflight=100_000)
    with BackgroundServer(app) as live:
        port = live.port
        head = (b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 90000\r\n\r\n[")  # fmt: skip
        stalled = _raw(port, head)
        time.sleep(0.2)
        # 90,000 bytes are promised and held: another 20,000 do not fit.
        busy = httpx.post(f"{live.url}/v1/records", json=[rec(f"m{i}") for i in range(200)])
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["detail"]["reason"].startswith("busy")
        stalled.settimeout(5)
        answer = stalled.recv(4096)
        stalled.close()
        assert b" 408 " in answer.split(b"\r\n")[0]
        assert b"not received within 1 s" in answer
        # The budget is free again.
        assert httpx.post(f"{live.url}/v1/records", json=[rec("m1")]).status_code == 200


# --- authentication ---------------------------------------------------------------------------


def test_a_token_guards_every_endpoint_but_healthz(store: Engine) -> None:
    token = "s3cret-token"
    with LiveCollector(store, ReconcileConfig(), token=token) as live:
        url = live.url
        assert httpx.get(f"{url}/healthz").status_code == 200
        for method, path in (("POST", "/v1/records"), ("GET", "/v1/slis"), ("GET", "/metrics"),
                             ("GET", "/readyz"), ("GET", "/v1/discrepancies?kind=lost")):
            resp = httpx.request(method, f"{url}{path}", json=[rec("m1")])
            assert resp.status_code == 401, path
            assert resp.headers["www-authenticate"] == "Bearer"
            assert resp.json() == {"detail": {"field": "authorization",
                                              "reason": "a bearer token is required"}}
        wrong = httpx.get(f"{url}/v1/slis", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"]["reason"] == "the token is not valid"
        good = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/v1/slis", headers=good).status_code == 200
        tally = Tally("s", collector_url=url, tracing=False, token=token, flush_interval=0.05)
        tally.produced("via-shim")
        assert tally.flush(10)
        tally.close()
        assert [r["message_id"] for r in logged(store)] == ["via-shim"]
    with LiveCollector(store, ReconcileConfig(), token=token, metrics_open=True) as live:
        assert httpx.get(f"{live.url}/metrics").status_code == 200
        assert httpx.get(f"{live.url}/v1/slis").status_code == 401


# --- a flood of names -------------------------------------------------------------------------


def test_new_names_past_the_series_limit_are_refused(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_series=3) as live:
        post = f"{live.url}/v1/records"
        assert httpx.post(post, json=[rec("m1"), rec("m1", "consume")]).status_code == 200
        flood = [rec("x", stream=f"random-{i}") for i in range(5)]
        resp = httpx.post(post, json=flood)
        assert resp.status_code == 422
        assert resp.json()["detail"]["field"] == "records[1].stream"  # random-0 fits: 3 names
        assert "limit of 3 (--max-series)" in resp.json()["detail"]["reason"]
        # Names it knows still flow, whoever sends them.
        assert httpx.post(post, json=[rec("m2"), rec("m2", "consume")]).status_code == 200


# --- readiness --------------------------------------------------------------------------------


def test_readiness_names_an_engine_that_stopped(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), reconcile_interval=0.05) as live:
        deadline = time.monotonic() + 10
        while httpx.get(f"{live.url}/readyz").json().get("engine") != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        live.app.state.engine_loop.stop()
        resp = httpx.get(f"{live.url}/readyz")
        assert resp.status_code == 503
        assert resp.json()["detail"]["reason"] == "the engine thread is not running"
        assert httpx.get(f"{live.url}/healthz").status_code == 200


# --- a shim after an outage -------------------------------------------------------------------


def test_a_shim_resumes_within_a_second_of_the_collector_coming_back(tmp_path: Path) -> None:
    port = free_port()
    tally = Tally("s", collector_url=f"http://127.0.0.1:{port}", tracing=False,
                  flush_interval=0.05, timeout=0.5)  # fmt: skip
    for i in range(100):
        tally.produced(f"m{i}")
    time.sleep(4)  # the collector is away: the shim backs off, up to its cap
    store = open_store(str(tmp_path / "s.db"))
    with BackgroundServer(create_app(store, ReconcileConfig()), port=port):
        back = time.monotonic()
        while len(logged(store)) < 100:
            assert time.monotonic() - back < 1.5, "the shim did not resume within a second"
            time.sleep(0.02)
        tally.close()
    store.dispose()


# --- the shipper survives its own errors ------------------------------------------------------


def test_the_shipper_survives_an_error_and_counts_what_it_cost(store: Engine) -> None:
    registry = CollectorRegistry()
    with LiveCollector(store, ReconcileConfig()) as live:
        tally = Tally("s", collector_url=live.url, registry=registry, tracing=False,
                      flush_interval=0.05)  # fmt: skip
        # A row the shim itself would never build: the JSON encoder fails on it.
        tally.shipper.put(("s", "produce", "bad", object(), "", 1, "ok", None, None, None,
                           None, None))  # fmt: skip
        assert tally.flush(10)
        tally.produced("after")
        assert tally.flush(10)
        assert tally.shipper._thread is not None and tally.shipper._thread.is_alive()
        tally.close()
        assert "after" in {r["message_id"] for r in logged(store)}
    assert total_dropped(registry) == 1

