"""HTTP webhooks end to end: a real publisher (httpx, retries) and a real receiver
(uvicorn on a free port) with real faults, checked against a real collector.

Faults, all real HTTP: a receiver that answers 500/503 before processing
(retries), one that processes and answers 500 anyway (a duplicate on the
retry), one that processes and then answers after the publisher's timeout (the
publisher retries: a duplicate), a permanent 400 (no retry, indeterminate
produce), a dead-letter, a request with only an Idempotency-Key (fallback
id) and one with no id at all (not reported, counted).
"""

# No `from __future__ import annotations`: the routes below name local
# dependencies in Annotated[...], which FastAPI must evaluate at definition.

import asyncio
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from msgtally.ingest.shim.adapters.webhooks.publisher import AsyncPublisher, Publisher
from msgtally.ingest.shim.adapters.webhooks.receiver import (
    Received,
    TallyDependency,
    TallyMiddleware,
)
from msgtally.ingest.shim.tally import Tally
from msgtally.server import BackgroundServer, free_port
from tests.adapter_support import Observed, adapter_env, figures_of
from tests.harness import logged

GROUP = "receiver"
SENDER_TIMEOUT = 3.0  # the slow handler answers after SLOW_ANSWER: a real client timeout
SLOW_ANSWER = 4.0


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the receiver"
        time.sleep(0.02)


def consumed_total(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for m in registry.collect()
        if m.name == "msgtally_sdk_consumed"
        for s in m.samples
        if s.name == "msgtally_sdk_consumed_total"
    )


class Receiver:
    """The receiving service; `log` is what the test saw it do, per request."""

    def __init__(self, rx: Tally, registry: CollectorRegistry, streams: dict[str, str]) -> None:
        self.log: list[tuple[str, str, int, str]] = []  # stream, id, attempt, action
        self.lock = threading.Lock()
        by_path = {f"/mw/{name}": stream for name, stream in streams.items()}
        app = FastAPI()
        app.add_middleware(
            TallyMiddleware, tally=rx, group=GROUP, stream=by_path.get, registry=registry
        )
        after = TallyDependency(rx, group=GROUP, stream=streams["after"], registry=registry)
        dlq = TallyDependency(rx, group=GROUP, stream=streams["dlq"], registry=registry)

        def note(d: Received, action: str) -> None:
            with self.lock:
                self.log.append((d.stream, d.message_id, d.attempt, action))

        @app.post("/mw/{name}")
        async def tracked(name: str, request: Request) -> JSONResponse:
            d: Received = request.state.msgtally
            body = await request.json()
            if not d.message_id:
                note(d, "unidentified")
                return JSONResponse({})
            fault = body.get("fault")
            if fault == "fail" and d.attempt <= body.get("times", 1):
                note(d, "refused")  # answers 5xx before processing: a retry
                return JSONResponse({}, status_code=body.get("status", 500))
            if fault == "reject":
                note(d, "refused")  # a permanent 400: no retry
                return JSONResponse({}, status_code=400)
            note(d, "processed")
            if fault == "slow" and d.attempt == 1:
                await asyncio.sleep(SLOW_ANSWER)  # the publisher has given up by now
            return JSONResponse({})

        @app.post("/dep/after")
        async def after_route(
            d: Annotated[Received, Depends(after)], request: Request
        ) -> JSONResponse:
            body = await request.json()
            note(d, "processed")
            if body.get("fault") == "answer500" and d.attempt == 1:
                return JSONResponse({}, status_code=500)  # processed, answers 500 anyway
            return JSONResponse({})

        @app.post("/dep/dlq")
        async def dlq_route(d: Annotated[Received, Depends(dlq)], request: Request) -> JSONResponse:
            body = await request.json()
            if body.get("fault") == "dead" and d.attempt == 1:
                d.dead_letter()  # parked for good; the publisher sees a 2xx
                note(d, "dead_letter")
                return JSONResponse({}, status_code=202)
            if body.get("fault") == "raise" and d.attempt == 1:
                note(d, "refused")
                raise HTTPException(503, "busy")  # an error for the dependency: a retry
            note(d, "processed")
            return JSONResponse({})

        self.app = app

    def count(self, action: str, stream: str) -> Counter[str]:
        with self.lock:
            return Counter(m for s, m, _, a in self.log if s == stream and a == action)

    def tracked(self, stream: str) -> int:
        with self.lock:
            return sum(1 for s, _, _, a in self.log if s == stream and a != "unidentified")


def observed(receiver: Receiver, stream: str, sent: dict[str, tuple[int, bool]]) -> Observed:
    """What the test saw for one stream: the sends, and what the receiver did."""
    obs = Observed()
    for mid, (attempts, ok) in sent.items():
        obs.produce(mid, attempts, acked=ok)
    outcomes = {"processed": "ok", "refused": "error", "dead_letter": "dead_letter"}
    with receiver.lock:
        for s, mid, attempt, action in receiver.log:
            if s == stream and action in outcomes:
                obs.deliver(mid, attempt, outcomes[action])
    return obs


def test_webhooks_end_to_end(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    names = ("flaky", "slow", "reject", "plain", "after", "dlq")
    streams = {name: f"wh-{run}-{name}" for name in names}
    sent: dict[str, dict[str, tuple[int, bool]]] = defaultdict(dict)  # stream -> id -> result

    with adapter_env(tmp_path, "http") as env:
        tx, rx = env.tally(), env.tally()
        tx_registry, rx_registry = env.registry(tx), env.registry(rx)
        receiver = Receiver(rx, rx_registry, streams)
        with (
            BackgroundServer(receiver.app) as hooks,  # type: ignore[arg-type]
            Publisher(tx, timeout=SENDER_TIMEOUT, backoff=0.01, max_backoff=0.05) as publisher,
        ):

            def send(name: str, body: dict[str, Any], path: str = "/mw/") -> None:
                url = f"{hooks.url}{path}{name}" if path == "/mw/" else f"{hooks.url}{path}"
                result = publisher.publish(url, json=body, stream=streams[name])
                sent[streams[name]][result.message_id] = (result.attempts, result.ok)

            # Retries: 500 twice, 503 once, or straight through.
            for i in range(12):
                fault = [
                    {"fault": "fail", "times": 2},
                    {"fault": "fail", "status": 503},
                    {},
                ][i % 3]
                send("flaky", fault)
            # A permanent 400 is not retried; the rest pass.
            for fault in ({"fault": "reject"}, {}, {}):
                send("reject", fault)
            # Processed, then answered after the publisher's timeout (concurrently).
            slow = [
                threading.Thread(target=send, args=("slow", {"fault": "slow"})) for _ in range(2)
            ]
            for t in slow:
                t.start()
            for _ in range(2):
                send("slow", {})
            # The dependency: processed, answered 500 anyway -> a duplicate on retry.
            for i in range(6):
                send("after", {"fault": "answer500"} if i % 2 == 0 else {}, path="/dep/after")
            for t in slow:
                t.join()

            # The async publisher, against the dependency with a dead letter and a raise.
            async def dlq_traffic() -> None:
                async with AsyncPublisher(tx, backoff=0.01, max_backoff=0.05) as apublisher:
                    for fault in ("dead", "dead", "raise", "", "", ""):
                        result = await apublisher.publish(
                            f"{hooks.url}/dep/dlq", json={"fault": fault}, stream=streams["dlq"]
                        )
                        sent[streams["dlq"]][result.message_id] = (result.attempts, result.ok)

            asyncio.run(dlq_traffic())

            # Not from a msgtally publisher: an Idempotency-Key only, then no id at all.
            key = f"idem-{run}"
            with httpx.Client() as plain:
                for headers in ({"Idempotency-Key": key}, {}):
                    plain.post(f"{hooks.url}/mw/plain", json={}, headers=headers).raise_for_status()

            # Every tracked request has been answered and reported (the slow
            # ones answer after the publisher gave up).
            total = sum(receiver.tracked(s) for s in streams.values())
            wait_for(lambda: consumed_total(rx_registry) == total)
        got = {name: env.figures(streams[name], GROUP) for name in names}
        produce_rows = [
            (r["message_id"], r["attempt"], r["span_id"])
            for r in logged(env.store)
            if r["kind"] == "produce"
        ]
        plain_rows = logged(env.store, streams["plain"])
        producer_spans = tuple(env.spans_of(SpanKind.PRODUCER))
        consumer_spans = tuple(env.spans_of(SpanKind.CONSUMER))

    # The collector agrees with what the test observed, stream by stream...
    for name in ("flaky", "slow", "reject", "after", "dlq"):
        assert got[name] == observed(receiver, streams[name], sent[streams[name]]).expected(), name
    # ...and the faults happened as designed.
    assert got["flaky"] == figures_of(
        produced=12,
        delivered=12,
        retried=8,
        attempts=4 * 3 + 4 * 2 + 4 * 1,
        consume_errors=4 * 2 + 4 * 1,
    )
    assert sorted(n for n, _ in sent[streams["flaky"]].values()) == [1] * 4 + [2] * 4 + [3] * 4
    # The 400 is final: produce indeterminate (not counted), its consume error counted.
    assert got["reject"] == figures_of(produced=2, delivered=2, attempts=3, consume_errors=1)
    # Two timeouts after processing: two retries, two duplicates.
    assert got["slow"] == figures_of(produced=4, delivered=4, duplicated=2, retried=2, attempts=6)
    assert got["after"] == figures_of(produced=6, delivered=6, duplicated=3, retried=3, attempts=9)
    # Dead-lettered ids are also lost (docs/definitions.md: produced, no ok consume).
    assert got["dlq"] == figures_of(
        produced=6,
        delivered=4,
        lost=2,
        dead_lettered=2,
        retried=1,
        attempts=7,
        consume_errors=1,
    )
    # Fallback id: the Idempotency-Key, consumed but never produced -> unexpected.
    assert got["plain"] == figures_of(unexpected=1)
    assert [(r["message_id"], r["kind"], r["outcome"]) for r in plain_rows] == [
        (key, "consume", "ok")
    ]
    # No id at all: not reported, counted.
    assert (
        rx_registry.get_sample_value(
            "msgtally_sdk_webhook_unidentified_total", {"stream": streams["plain"], "group": GROUP}
        )
        == 1
    )
    # The publisher's counters: one produce record per attempt.
    produce_errors = sum(
        n - 1 + (0 if ok else 1) for per in sent.values() for n, ok in per.values()
    )
    assert (
        sum(
            tx_registry.get_sample_value(
                "msgtally_sdk_produced_total", {"stream": s, "outcome": "error"}
            )
            or 0
            for s in streams.values()
        )
        == produce_errors
    )

    check_trace_links(producer_spans, consumer_spans, produce_rows)


def check_trace_links(
    producer_spans: tuple[ReadableSpan, ...],
    consumer_spans: tuple[ReadableSpan, ...],
    produce_rows: list[tuple[str, int, str]],
) -> None:
    """Every consumer span links to the producer span of the same attempt."""
    by_id: dict[str, list[ReadableSpan]] = defaultdict(list)
    for span in sorted(producer_spans, key=lambda s: s.start_time or 0):
        assert span.kind is SpanKind.PRODUCER
        assert span.attributes is not None
        by_id[str(span.attributes["messaging.message.id"])].append(span)
    linked = 0
    for span in consumer_spans:
        assert span.kind is SpanKind.CONSUMER
        assert span.attributes is not None
        mid = str(span.attributes["messaging.message.id"])
        if mid not in by_id:  # the Idempotency-Key request had no producer
            assert mid.startswith("idem-") and not span.links
            continue
        attempt = int(str(span.attributes["msgtally.attempt"]))
        producer = by_id[mid][attempt - 1].context
        assert producer is not None
        assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
            (producer.trace_id, producer.span_id)
        ]
        linked += 1
    assert linked == sum(len(v) for v in by_id.values())  # one consume per attempt here
    # The produce records carry their span's ids.
    assert len(produce_rows) == linked
    for mid, attempt, span_id in produce_rows:
        ctx = by_id[mid][attempt - 1].context
        assert ctx is not None
        assert span_id == format(ctx.span_id, "016x")


def test_middleware_on_a_bare_asgi_app(tmp_path: Path) -> None:
    """Any ASGI app: a bare callable that fails first attempts and raises once."""
    stream = f"bare-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[bytes, int]] = []

    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = dict(scope["headers"])
        mid = headers.get(b"msgtally-message-id", b"")
        attempt = int(headers.get(b"msgtally-attempt", b"1"))
        seen.append((mid, attempt))
        while (await receive()).get("more_body"):
            pass
        if mid.endswith(b"raise") and attempt == 1:
            raise RuntimeError("handler crashed")  # uvicorn answers 500
        status = 500 if mid.endswith(b"fail") and attempt < 3 else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    with adapter_env(tmp_path, "http") as env:
        tally = env.tally(traced=False)
        registry = env.registry(tally)
        app = TallyMiddleware(bare, tally=tally, group=GROUP, stream=stream, registry=registry)
        with (
            BackgroundServer(app) as hooks,  # type: ignore[arg-type]
            Publisher(tally, stream=stream, backoff=0.01, max_backoff=0.05) as publisher,
        ):
            results = [
                publisher.publish(hooks.url, content=b"{}", message_id=f"m{i}-{suffix}")
                for i, suffix in enumerate(("ok", "fail", "raise", "ok"))
            ]
        assert [r.attempts for r in results] == [1, 3, 2, 1]
        assert all(r.ok for r in results)
        wait_for(lambda: consumed_total(registry) == len(seen))
        got = env.figures(stream, GROUP)
    assert len(seen) == 7
    # Two 500s and one exception: consume errors, each retried by the publisher.
    assert got == figures_of(produced=4, delivered=4, retried=2, attempts=7, consume_errors=3)


def test_publisher_gives_up_and_raises_with_the_message_id() -> None:
    """A closed port: every attempt is an indeterminate produce, then the error."""
    registry = CollectorRegistry()
    # The collector is not needed: these records only go to the counters.
    tally = Tally("nowhere", collector_url="http://127.0.0.1:9", registry=registry, tracing=False)
    url = f"http://127.0.0.1:{free_port()}/hook"
    with (
        Publisher(tally, max_attempts=3, backoff=0.01, max_backoff=0.02) as publisher,
        pytest.raises(httpx.ConnectError) as info,
    ):
        publisher.publish(url, json={}, message_id="lost-1")
    assert any("lost-1" in note and "3 attempts" in note for note in info.value.__notes__)
    value = registry.get_sample_value(
        "msgtally_sdk_produced_total", {"stream": "nowhere", "outcome": "error"}
    )
    assert value == 3
    tally.close(timeout=0.1)


def test_error_classes_over_real_http(tmp_path: Path) -> None:
    """Failures each side of a real webhook, in their classes, counted exactly in
    /v1/slis: a sender whose token the receiver refuses (401: auth, both sides), a
    body the receiver cannot read and answers 400 (serialization, both sides), and
    one it fails to decode by raising (serialization at the receiver; the sender
    sees uvicorn's 500: other)."""
    stream = f"classes-{uuid.uuid4().hex[:8]}"

    async def receiving(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status = 200
        if headers.get(b"authorization") != b"Bearer current":
            status = 401
        elif headers.get(b"x-strict") == b"raise":
            json.loads(body)  # JSONDecodeError, raised: the middleware classifies it
        else:
            try:
                json.loads(body)
            except json.JSONDecodeError:
                status = 400
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    token = {"authorization": "Bearer current"}
    with adapter_env(tmp_path, "http") as env:
        tally = env.tally(traced=False)
        registry = env.registry(tally)
        app = TallyMiddleware(receiving, tally=tally, group=GROUP, stream=stream,
                              registry=registry)  # fmt: skip
        with (
            BackgroundServer(app) as hooks,  # type: ignore[arg-type]
            Publisher(tally, stream=stream, max_attempts=1) as publisher,
        ):
            sends = [
                ("ok-1", token, b'{"n": 1}'),
                ("ok-2", token, b'{"n": 2}'),
                ("rotated", {"authorization": "Bearer previous"}, b'{"n": 3}'),
                ("garbled", token, b"{not json"),
                ("raised", {**token, "x-strict": "raise"}, b"{not json"),
            ]
            results = {
                mid: publisher.publish(hooks.url, content=body, headers=headers, message_id=mid)
                for mid, headers, body in sends
            }
        assert {mid: (r.ok, r.attempts) for mid, r in results.items()} == {
            "ok-1": (True, 1), "ok-2": (True, 1), "rotated": (False, 1),
            "garbled": (False, 1), "raised": (False, 1),
        }  # fmt: skip
        wait_for(lambda: consumed_total(registry) == 5)
        errors = env.errors(stream, GROUP)
        got = env.figures(stream, GROUP)
    assert errors == {
        "produce": {"auth": 1, "serialization": 1, "other": 1},
        "consume": {"auth": 1, "serialization": 2},
    }
    # The failed sends are indeterminate (sent, never confirmed), their deliveries
    # consume errors; the two ok ones delivered.
    assert got == figures_of(produced=2, delivered=2, attempts=5, consume_errors=3)
