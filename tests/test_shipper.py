"""Shipping records without hurting the service, and without losing or
doubling any: a collector that is down, slow, answers after the shim gave
up, or fails for a while; a fork; shutdown with records queued. Real
collector, real sockets (the slow and failing collectors are real ASGI apps
in front of the real one), no mocks.

Timing: no test asserts that something took less than X ms. "Calls stay
fast" is checked as 10,000 calls finishing within a generous 5 s while the
collector is down or slow: a hang detector (a call that waited on the
network would take seconds), not a benchmark; bench/shim_cost.py measures.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msgtally.app import create_app
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally
from msgtally.server import BackgroundServer, free_port
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.harness import repeats
from tests.test_sdk import CONFIG, figures, samples, settle_and_read, stored, total, unique

HANG_BOUND = 5.0  # seconds for 10,000 calls: a hang detector, see the module doc
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Engine]:
    eng = open_store(f"sqlite:///{tmp_path / 'shipper.db'}")
    yield eng
    eng.dispose()


class Front:
    """A real ASGI app in front of the real collector, for POST /v1/records.

    For the n-th request (from 0): `refuse(n)` answers 503 without storing;
    otherwise it waits `before(n)` seconds, lets the collector store the
    batch, keeps the answer, waits `after(n)` seconds and only then answers.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        before: Callable[[int], float] = lambda n: 0.0,
        after: Callable[[int], float] = lambda n: 0.0,
        refuse: Callable[[int], bool] = lambda n: False,
    ) -> None:
        self.app, self.before, self.after, self.refuse = app, before, after, refuse
        self.answers: list[tuple[int, int, bytes]] = []  # n, status, body
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/records":
            await self.app(scope, receive, send)
            return
        n = self.requests
        self.requests += 1
        if self.refuse(n):
            while (await receive()).get("more_body"):
                pass
            self.answers.append((n, 503, b""))
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await asyncio.sleep(self.before(n))
        kept: list[Message] = []

        async def keep(message: Message) -> None:
            kept.append(message)

        await self.app(scope, receive, keep)
        status = next(m["status"] for m in kept if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in kept if m["type"] == "http.response.body")
        self.answers.append((n, status, body))
        await asyncio.sleep(self.after(n))
        for message in kept:  # a no-op once the shim has hung up
            await send(message)


def calls(tally: Tally, n_ids: int, group: str = "g", prefix: str = "m") -> float:
    """produced + consumed for n_ids ids (2 * n_ids calls); the seconds it took."""
    start = time.monotonic()
    for i in range(n_ids):
        headers = tally.produced(f"{prefix}{i}")
        assert headers[MESSAGE_ID_HEADER] == f"{prefix}{i}"  # the host's call still works
        tally.consumed(f"{prefix}{i}", group=group, headers=headers)
    return time.monotonic() - start


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- the collector down, slow, late, failing ------------------------------------------


def test_collector_down_for_the_whole_run_then_up(store: Engine) -> None:
    stream = unique("down")
    registry = CollectorRegistry()
    port = free_port()  # nobody listens here until the collector comes up below
    max_buffer, batch = 1000, 100
    tally = Tally(
        stream,
        collector_url=f"http://127.0.0.1:{port}",
        registry=registry,
        tracing=False,
        batch_size=batch,
        max_buffer=max_buffer,
        flush_interval=0.05,
        timeout=1.0,
    )
    held: list[int] = []
    elapsed = 0.0
    for chunk in range(10):  # 10,000 calls, the buffer sampled as they go
        elapsed += calls(tally, 500, prefix=f"m{chunk}-")
        held.append(len(tally.shipper._buffer))
    assert elapsed < HANG_BOUND  # hang detector only (see the module doc)
    assert max(held) <= max_buffer
    dropped = total(registry, "msgtally_sdk_records_dropped_total")
    assert 10_000 - max_buffer - batch <= dropped < 10_000
    assert dropped == sum(tally.shipper.dropped.values())

    with BackgroundServer(create_app(store, CONFIG), port=port) as live:
        assert tally.flush(30)
        rows = stored(store, stream)
        slis = settle_and_read(store, live.url)
        metrics = scrape(live.url)
        tally.close()
    # Every call is accounted for exactly once: stored, or dropped and counted.
    assert len(rows) + dropped == 10_000
    assert len(rows) <= max_buffer + batch  # the buffer, and the batch in hand
    assert total(registry, "msgtally_sdk_records_shipped_total") == len(rows)
    produce_drops = samples(registry, "msgtally_sdk_records_dropped_total")[
        (("group", ""), ("kind", "produce"), ("stream", stream))
    ]
    consume_drops = dropped - produce_drops
    # The drop totals reached the collector: /metrics and the SLIs.
    labels = {"stream": stream, "group": ""}
    assert metrics[("msgtally_records_dropped_total", _key(labels, kind="produce"))] == (
        produce_drops
    )
    labels["group"] = "g"
    assert metrics[("msgtally_records_dropped_total", _key(labels, kind="consume"))] == (
        consume_drops
    )
    # And the SLIs are those of exactly the records that got through.
    p = {r["message_id"] for r in rows if r["kind"] == "produce"}
    c = {r["message_id"] for r in rows if r["kind"] == "consume"}
    got, want = figures(
        slis[(stream, "g")],
        produced=len(p),
        delivered=len(p & c),
        lost=len(p - c),
        unexpected=len(c - p),
        attempts=len(p & c),
        records_dropped=int(dropped),
        # every record dropped is a gap in its sequence the collector found
        produce_records_missing=int(produce_drops),
        consume_records_missing=int(consume_drops),
    )
    assert got == want


def _key(labels: dict[str, str], **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**labels, **more}.items()))


def test_collector_slow_calls_stay_fast_nothing_lost(store: Engine) -> None:
    stream = unique("slow")
    registry = CollectorRegistry()
    front = Front(create_app(store, CONFIG), before=lambda n: 0.3)
    with BackgroundServer(front) as live:  # type: ignore[arg-type]
        tally = Tally(
            stream,
            collector_url=live.url,
            registry=registry,
            tracing=False,
            batch_size=2000,
            max_buffer=20_000,
            flush_interval=0.05,
            timeout=5.0,
        )
        elapsed = calls(tally, 5000)
        assert elapsed < HANG_BOUND  # hang detector only (see the module doc)
        assert tally.flush(60)
        slis = settle_and_read(store, live.url)
        tally.close()
    assert front.requests >= 5
    got, want = figures(slis[(stream, "g")], produced=5000, delivered=5000, attempts=5000)
    assert got == want
    assert total(registry, "msgtally_sdk_records_shipped_total") == 10_000
    assert total(registry, "msgtally_sdk_records_dropped_total") == 0


def test_a_resend_after_a_timeout_is_not_counted_twice(store: Engine) -> None:
    """The collector stores the batch, then answers after the shim's timeout."""
    stream = unique("late")
    registry = CollectorRegistry()
    front = Front(create_app(store, CONFIG), after=lambda n: 2.0 if n == 0 else 0.0)
    with BackgroundServer(front) as live:  # type: ignore[arg-type]
        tally = Tally(
            stream,
            collector_url=live.url,
            registry=registry,
            tracing=False,
            flush_interval=3600,  # one batch, sent by flush()
            timeout=0.5,
        )
        calls(tally, 100)
        assert tally.flush(20)
        rows = stored(store, stream)
        slis = settle_and_read(store, live.url)
        tally.close()
    # The first answer came too late for the shim, which resent the same batch
    # (the thread may have sent a first record on its own before flush()).
    answers = [httpx.Response(status, content=body).json() for _, status, body in front.answers]
    assert all(status == 200 for _, status, _ in front.answers)
    first = answers[0]["accepted"]
    assert first > 0
    assert answers[1] == {"accepted": first}  # the same batch, logged again
    assert sum(a["accepted"] for a in answers) == 200 + first
    assert len(rows) == 200  # distinct records
    assert repeats(store) == first  # the engine counted the resent batch once
    got, want = figures(slis[(stream, "g")], produced=100, delivered=100, attempts=100)
    assert got == want
    assert total(registry, "msgtally_sdk_records_shipped_total") == 200


def test_collector_failing_for_a_while_loses_nothing(store: Engine) -> None:
    stream = unique("503")
    registry = CollectorRegistry()
    front = Front(create_app(store, CONFIG), refuse=lambda n: n < 3)
    with BackgroundServer(front) as live:  # type: ignore[arg-type]
        tally = Tally(
            stream, collector_url=live.url, registry=registry, tracing=False, flush_interval=0.05
        )
        calls(tally, 300)
        assert tally.flush(30)
        slis = settle_and_read(store, live.url)
        tally.close()
    assert [status for _, status, _ in front.answers[:3]] == [503, 503, 503]
    got, want = figures(slis[(stream, "g")], produced=300, delivered=300, attempts=300)
    assert got == want
    assert total(registry, "msgtally_sdk_records_shipped_total") == 600
    assert total(registry, "msgtally_sdk_records_dropped_total") == 0


# -- fork and shutdown ------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_ships_its_own_records_only(store: Engine) -> None:
    stream = unique("fork")
    registry = CollectorRegistry()
    with LiveCollector(store, CONFIG) as live:
        tally = Tally(
            stream,
            collector_url=live.url,
            registry=registry,
            tracing=False,
            flush_interval=3600,  # the parent's records stay queued across the fork
            batch_size=10_000,
            max_buffer=10_000,
        )
        # One record shipped first: the thread is up and idle (it would wake
        # only at 10,000 records or in an hour), so the next ones stay queued.
        calls(tally, 1, prefix="parent-w")
        assert tally.flush(10)
        time.sleep(0.1)
        calls(tally, 50, prefix="parent-")
        assert tally.shipper._buffer  # queued in the parent when it forks (100, as a rule)
        parent_instance = tally.instance
        pid = os.fork()
        if pid == 0:  # the child: report its own records, ship them, leave at once
            code = 1
            try:
                calls(tally, 30, prefix="child-")
                code = 0 if tally.flush(20) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert tally.instance == parent_instance
        assert tally.flush(20)
        rows = stored(store, stream)
        slis = settle_and_read(store, live.url)
        tally.close()
    parent = [r for r in rows if r["message_id"].startswith("parent-")]
    child = [r for r in rows if r["message_id"].startswith("child-")]
    assert len(parent) == 102 and len(child) == 60 and len(rows) == 162  # none doubled
    assert all(r["record_id"].startswith(parent_instance + ":") for r in parent)
    child_instances = {r["record_id"].rsplit(":", 1)[0] for r in child}
    assert len(child_instances) == 1 and parent_instance not in child_instances
    assert str(pid) in next(iter(child_instances))
    # Each process numbers its own records from 1, per (stream, kind, group).
    for kind in ("produce", "consume"):
        assert sorted(r["seq"] for r in parent if r["kind"] == kind) == list(range(1, 52))
        assert sorted(r["seq"] for r in child if r["kind"] == kind) == list(range(1, 31))
    assert {r["producer"] for r in child} == child_instances
    assert {r["producer"] for r in parent} == {parent_instance}
    got, want = figures(slis[(stream, "g")], produced=81, delivered=81, attempts=81)
    assert got == want


def test_close_flushes_what_is_queued_then_drops_and_counts(store: Engine) -> None:
    stream = unique("close")
    registry = CollectorRegistry()
    with LiveCollector(store, CONFIG) as live:
        tally = Tally(
            stream,
            collector_url=live.url,
            registry=registry,
            tracing=False,
            flush_interval=3600,
            batch_size=100_000,
            max_buffer=100_000,
        )
        calls(tally, 500)
        assert tally.close()
        assert len(stored(store, stream)) == 1000
        # After close: calls still return, their records are dropped and counted.
        assert tally.produced("late")[MESSAGE_ID_HEADER] == "late"
        tally.consumed("late", group="g")
        assert len(stored(store, stream)) == 1000
    assert total(registry, "msgtally_sdk_records_dropped_total") == 2
    assert total(registry, "msgtally_sdk_records_shipped_total") == 1000


_EXITING_SERVICE = textwrap.dedent(
    """
    import sys
    from msgtally.ingest.shim.tally import Tally

    tally = Tally(sys.argv[1], collector_url=sys.argv[2], tracing=False,
                  flush_interval=3600, batch_size=100_000, max_buffer=100_000)
    for i in range(1000):
        tally.produced(f"x{i}")
        tally.consumed(f"x{i}", group="g")
    if sys.argv[3] == "raise":
        raise RuntimeError("the service dies with 2000 records queued")
    # else: falls off the end without close(); atexit flushes
    """
)


@pytest.mark.parametrize("ending", ["return", "raise"])
def test_interpreter_exit_flushes_queued_records(store: Engine, ending: str) -> None:
    stream = unique(f"exit-{ending}")
    with LiveCollector(store, CONFIG) as live:
        done = subprocess.run(
            [sys.executable, "-c", _EXITING_SERVICE, stream, live.url, ending],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        rows = stored(store, stream)
    assert done.returncode == (1 if ending == "raise" else 0), done.stderr
    assert len(rows) == 2000


def test_a_long_outage_keeps_the_backoff_finite() -> None:
    """2**failures grew without bound: after about a thousand failures in a row
    (some nine minutes of a collector away) the delay overflowed a float, and
    the error cost the batch in hand. The exponent stops growing; the cap holds."""
    from msgtally.ingest.shim.shipper import Shipper

    shipper = Shipper("http://127.0.0.1:1", source="s", backoff_base=1e-6, backoff_max=1e-4)
    for failures in (1, 64, 1100, 10**6):
        shipper._backoff(failures)  # waits at most backoff_max; never raises
    shipper._held = True  # a refused credential: the longer cap, as finite
    shipper.auth_backoff_max = 1e-4
    shipper._backoff(10**6)
    shipper.close()
