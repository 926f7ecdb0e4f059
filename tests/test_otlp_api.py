"""OTLP/HTTP on a real collector: POST /v1/traces as the OTLP specification
says, and every record from a span judged as /v1/records judges it."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy import Engine

from msgtally.ingest.intake.otlp.mapping import Mapped, map_span
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.harness import logged, repeats
from tests.otlp_support import (
    CONSUMER,
    PRODUCER,
    T_NS,
    as_json,
    partial,
    post,
    request,
    span,
)

SEND = {"messaging.system": "rabbitmq", "messaging.destination.name": "orders"}
PROTOBUF = {"content-type": "application/x-protobuf"}


def produce_span(mid: str, **attrs: object) -> Span:
    return span({**SEND, "messaging.message.id": mid, **attrs}, PRODUCER)


def consume_span(mid: str, **attrs: object) -> Span:
    return span({**SEND, "messaging.message.id": mid, "messaging.consumer.group.name": "billing",
                 **attrs}, CONSUMER, end_ms=1500)  # fmt: skip


def status_of(resp: httpx.Response) -> Status:
    """The google.rpc.Status of an OTLP/HTTP error answer, in its encoding."""
    if resp.headers["content-type"] == "application/json":
        return json_format.Parse(resp.content, Status())
    assert resp.headers["content-type"] == "application/x-protobuf"
    return Status.FromString(resp.content)


def test_spans_become_records_and_a_resent_export_counts_once(
    store: Engine, collector: LiveCollector
) -> None:
    req = request([produce_span("m1"), consume_span("m1"), produce_span("m2")])
    assert partial(post(collector.url, req)) == (0, "")
    assert partial(post(collector.url, req)) == (0, "")  # the exporter retried
    got = logged(store)
    assert [(r["kind"], r["message_id"], r["group"], r["ts"]) for r in got] == [
        ("consume", "m1", "billing", (T_NS + 1500 * 10**6) / 1e9),
        ("produce", "m1", "", (T_NS + 10**9) / 1e9),
        ("produce", "m2", "", (T_NS + 10**9) / 1e9),
    ]
    reconcile(store, ReconcileConfig(), now=T_NS / 1e9 + 1000)
    assert repeats(store) == 3
    (sli,) = httpx.get(f"{collector.url}/v1/slis").json()
    assert (sli["produced"], sli["delivered"], sli["lost"], sli["attempts"]) == (2, 1, 1, 1)


def test_an_empty_export_is_a_success(collector: LiveCollector) -> None:
    assert partial(httpx.post(f"{collector.url}/v1/traces", content=b"", headers=PROTOBUF)) == (
        0,
        "",
    )


def test_otlp_json_with_hex_ids(store: Engine, collector: LiveCollector) -> None:
    s = produce_span("j1")
    body = as_json(request([s, consume_span("j2", **{"msgtally.attempt": "2"})]))
    assert body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == s.trace_id.hex()
    resp = httpx.post(f"{collector.url}/v1/traces", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    answer = resp.json()["partialSuccess"]
    assert answer["rejectedSpans"] == "1"  # int64 in proto3 JSON
    assert answer["errorMessage"].endswith("msgtally.attempt: must be an integer, got a string")
    (record,) = logged(store)
    assert (record["message_id"], record["trace_id"]) == ("j1", s.trace_id.hex())
    # Unknown fields are ignored, as OTLP/JSON receivers must.
    body["resourceSpans"][0]["futureField"] = {"x": 1}
    assert httpx.post(f"{collector.url}/v1/traces", json=body).status_code == 200


def test_gzip_deflate_and_chunked_bodies(store: Engine, collector: LiveCollector) -> None:
    raw = request([produce_span("g1")]).SerializeToString()
    gz = httpx.post(f"{collector.url}/v1/traces", content=gzip.compress(raw),
                    headers={**PROTOBUF, "content-encoding": "gzip"})  # fmt: skip
    assert partial(gz) == (0, "")
    two = gzip.compress(raw[:10]) + gzip.compress(raw[10:])  # gzip members one after another
    members = httpx.post(f"{collector.url}/v1/traces", content=two,
                         headers={**PROTOBUF, "content-encoding": "gzip"})  # fmt: skip
    assert partial(members) == (0, "")
    raw2 = request([produce_span("d1")]).SerializeToString()
    deflate = httpx.post(f"{collector.url}/v1/traces", content=zlib.compress(raw2),
                         headers={**PROTOBUF, "content-encoding": "deflate"})  # fmt: skip
    assert partial(deflate) == (0, "")

    def chunks() -> Iterator[bytes]:  # no content-length: chunked, as the Node exporter sends
        body = gzip.compress(request([produce_span("c1")]).SerializeToString())
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    chunked = httpx.post(f"{collector.url}/v1/traces", content=chunks(),
                         headers={**PROTOBUF, "content-encoding": "gzip"})  # fmt: skip
    assert "content-length" not in chunked.request.headers
    assert partial(chunked) == (0, "")
    # g1 twice is the same span twice: one record
    assert sorted(r["message_id"] for r in logged(store)) == ["c1", "d1", "g1"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"\xff\xff\xff", PROTOBUF, 400, "body: not an ExportTraceServiceRequest"),
        (b"{", {"content-type": "application/json"}, 400, "body: not valid JSON"),
        (b"[]", {"content-type": "application/json"}, 400, "body: must be a JSON object"),
        (b'{"resourceSpans": 3}', {"content-type": "application/json"}, 400,
         "body: not an ExportTraceServiceRequest"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
         {"content-type": "application/json"}, 400,
         "resourceSpans[0].scopeSpans[0].spans[0].traceId: not a hexadecimal id"),
        (b"not gzip", {**PROTOBUF, "content-encoding": "gzip"}, 400, "body: not valid gzip"),
        (gzip.compress(b"x" * 100, mtime=0)[:-12], {**PROTOBUF, "content-encoding": "gzip"}, 400,
         "body: not valid gzip (truncated)"),
        (zlib.compress(b"") + b"junk", {**PROTOBUF, "content-encoding": "deflate"}, 400,
         "body: data after the end of the deflate stream"),
    ],
    ids=["protobuf", "json", "json array", "json resourceSpans", "json traceId", "gzip",
         "gzip truncated", "deflate junk"],
)  # fmt: skip
def test_a_body_that_is_no_request_is_a_400_with_a_status(
    store: Engine, collector: LiveCollector, body: bytes, headers: dict[str, str], status: int,
    message: str,
) -> None:  # fmt: skip
    resp = httpx.post(f"{collector.url}/v1/traces", content=body, headers=headers)
    assert resp.status_code == status
    got = status_of(resp)
    assert got.code == 3  # INVALID_ARGUMENT
    assert got.message.startswith(message), got.message
    assert logged(store) == []


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"content-type": "text/plain"}, "content-type"),
        ({}, "content-type"),
        ({**PROTOBUF, "content-encoding": "br"}, "content-encoding"),
    ],
)
def test_unsupported_media_is_a_415(
    collector: LiveCollector, headers: dict[str, str], field: str
) -> None:
    resp = httpx.post(f"{collector.url}/v1/traces", content=b"x", headers=headers)
    assert resp.status_code == 415
    if field == "content-type":  # the encoding is unknown: the collector's own shape
        assert resp.json()["detail"]["field"] == "content-type"
    else:
        assert status_of(resp).message.startswith("content-encoding: br is not supported")


def test_bodies_past_the_limit_are_413_also_once_decompressed(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_body=64 * 1024) as live:
        big = request([produce_span(f"m{i}") for i in range(2000)]).SerializeToString()
        assert len(big) > 64 * 1024
        resp = httpx.post(f"{live.url}/v1/traces", content=big, headers=PROTOBUF)
        assert resp.status_code == 413
        assert status_of(resp).message.startswith("body: larger than the limit of 65536 bytes")
        # a gzip bomb: 50 MiB of zeros in 50 kB
        bomb = gzip.compress(bytes(50 * 2**20), 9)
        assert len(bomb) < 64 * 1024
        resp = httpx.post(f"{live.url}/v1/traces", content=bomb,
                          headers={**PROTOBUF, "content-encoding": "gzip"})  # fmt: skip
        assert resp.status_code == 413
        assert status_of(resp).message == "body: larger than the limit of 65536 bytes decompressed"
        assert live.app.state.intake.inflight == 0
        small = gzip.compress(request([produce_span("fits")]).SerializeToString())
        ok = httpx.post(f"{live.url}/v1/traces", content=small,
                        headers={**PROTOBUF, "content-encoding": "gzip"})  # fmt: skip
        assert partial(ok) == (0, "")
    assert [r["message_id"] for r in logged(store)] == ["fits"]


def test_busy_is_429_with_retry_after(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_inflight=4096) as live:
        spans = [produce_span(f"m{i}") for i in range(100)]
        body = gzip.compress(request(spans).SerializeToString())
        assert len(body) < 4096  # the compressed body fits, decompressed it does not
        resp = httpx.post(f"{live.url}/v1/traces", content=body,
                          headers={**PROTOBUF, "content-encoding": "gzip"})  # fmt: skip
        assert resp.status_code == 429
        assert resp.headers["retry-after"] == "1"
        assert status_of(resp).code == 14  # UNAVAILABLE: exporters retry
        assert live.app.state.intake.inflight == 0
    assert logged(store) == []


def test_a_store_that_is_down_is_503_with_retry_after(tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    store = open_store(str(db))
    with LiveCollector(store, ReconcileConfig()) as live:
        db.unlink()
        db.mkdir()  # the path now cannot be opened as a database
        store.dispose()
        resp = post(live.url, request([produce_span("m1")]))
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert status_of(resp).message.startswith("store unavailable")
    store.dispose()


def test_the_token_applies_to_traces(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), token="s3cret") as live:
        req = request([produce_span("m1")])
        refused = post(live.url, req)
        assert refused.status_code == 401
        assert refused.json()["detail"] == {
            "field": "authorization", "reason": "a bearer token is required"
        }  # fmt: skip
        assert post(live.url, req, authorization="Bearer wrong").status_code == 401
        assert partial(post(live.url, req, authorization="Bearer s3cret")) == (0, "")
    assert len(logged(store)) == 1


# --- a record from a span is judged as the same record on /v1/records -----------------------

LONG = "x" * 257
CASES: list[tuple[str, Span]] = [
    ("fine produce", produce_span("ok-1")),
    ("fine consume", consume_span("ok-2", **{"msgtally.attempt": 2})),
    ("id too long", produce_span(LONG)),
    ("empty id", produce_span("")),
    ("NUL in id", produce_span("a\x00b")),
    ("id an integer", produce_span(7)),  # type: ignore[arg-type]
    ("empty stream", span({"messaging.destination.name": "", "messaging.message.id": "s"},
                          PRODUCER)),
    ("no stream", span({"messaging.system": "x", "messaging.message.id": "s"}, PRODUCER)),
    ("attempt 0", consume_span("a0", **{"msgtally.attempt": 0})),
    ("attempt too large", consume_span("a1", **{"messaging.gcp_pubsub.message.delivery_attempt":
                                                2**31})),
    ("attempt a string", consume_span("a2", **{"azure.servicebus.message.delivery_count": "2"})),
    ("attempt a number", consume_span("a3", **{"msgtally.attempt": 1.5})),
    ("attempt a boolean", consume_span("a4", **{"msgtally.attempt": True})),
    ("attempt an array", consume_span("a5", **{"msgtally.attempt": [1, 2]})),
    ("outcome unknown", consume_span("o1", **{"msgtally.outcome": "maybe"})),
    ("produce dead-lettered", produce_span("o2", **{"msgtally.outcome": "dead_letter"})),
    ("group an integer", consume_span("g1", **{"messaging.consumer.group.name": 5})),
    ("group too long", consume_span("g2", **{"messaging.consumer.group.name": LONG})),
    ("stream too long", produce_span("s1", **{"messaging.destination.name": LONG})),
]  # fmt: skip


def _late(s: Span) -> Span:
    s.end_time_unix_nano = 15 * 10**18  # 1.5e10 s: past the contract's 1e10
    return s


CASES.append(("ts in the far future", _late(produce_span("t1"))))


@pytest.mark.parametrize(("case", "s"), CASES, ids=[c for c, _ in CASES])
def test_a_record_from_a_span_is_judged_as_on_v1_records(
    store: Engine, collector: LiveCollector, case: str, s: Span
) -> None:
    mapped = map_span(s, "app", "svc")
    assert isinstance(mapped, Mapped), case
    (record,) = mapped.records
    direct = httpx.post(f"{collector.url}/v1/records", json=[record])
    rejected, message = partial(post(collector.url, request([s])))
    if direct.status_code == 200:
        assert (rejected, message) == (0, "")
        assert len(logged(store)) == 1  # the same record, logged twice, one record
    else:
        assert direct.status_code == 422
        detail = direct.json()["detail"]
        field = detail["field"].removeprefix("records[0].")
        source = mapped.source(0, field)
        where = f"resourceSpans[0].scopeSpans[0].spans[0] (span {s.trace_id.hex()}/" \
            f"{s.span_id.hex()})"  # fmt: skip
        assert rejected == 1
        assert message == f"1 spans rejected: {where}: {source}: {detail['reason']}"
        assert logged(store) == []


def test_bad_spans_are_rejected_and_the_rest_stored(
    store: Engine, collector: LiveCollector
) -> None:
    spans = [
        produce_span("good-1"),
        produce_span(LONG),
        consume_span("c", **{"msgtally.attempt": "x"}),
        span({"http.route": "/"}, 2),
        produce_span("good-2"),
        span({**SEND, "messaging.operation.type": 9, "messaging.message.id": "z"}, PRODUCER),
    ]
    rejected, message = partial(post(collector.url, request(spans)))
    assert rejected == 3
    assert message.startswith("3 spans rejected: resourceSpans[0].scopeSpans[0].spans[1] ")
    assert "messaging.message.id: longer than 256 characters" in message
    assert "spans[2] " in message
    assert "msgtally.attempt: must be an integer, got a string" in message
    assert "spans[5] " in message and "messaging.operation.type: must be a string" in message
    assert sorted(r["message_id"] for r in logged(store)) == ["good-1", "good-2"]
    metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in httpx.get(f"{collector.url}/metrics").text.splitlines()
        if line.startswith("msgtally_otlp_spans_total{") and 'transport="http"' in line
    }
    assert metrics == {
        'msgtally_otlp_spans_total{result="recorded",transport="http"}': 2.0,
        'msgtally_otlp_spans_total{result="rejected",transport="http"}': 3.0,
        'msgtally_otlp_spans_total{result="from_shim",transport="http"}': 0.0,
        'msgtally_otlp_spans_total{result="not_messaging",transport="http"}': 1.0,
        'msgtally_otlp_spans_total{result="not_a_delivery",transport="http"}': 0.0,
        'msgtally_otlp_spans_total{result="no_message_id",transport="http"}': 0.0,
    }


def test_the_answer_names_at_most_five_spans(collector: LiveCollector) -> None:
    rejected, message = partial(post(collector.url, request([produce_span("") for _ in range(8)])))
    assert rejected == 8
    assert message.count("must not be empty") == 5
    assert message.startswith("8 spans rejected: ") and message.endswith("; and 3 more")


def test_new_names_past_the_series_limit_reject_their_spans(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_series=2) as live:
        first = [produce_span("a"), consume_span("b")]  # (orders, ""), (orders, billing)
        assert partial(post(live.url, request(first))) == (0, "")
        new = {"messaging.consumer.group.name": "new"}
        more = [produce_span("c"), consume_span("d", **new), consume_span("e", **new),
                consume_span("f")]  # fmt: skip
        rejected, message = partial(post(live.url, request(more)))
        assert rejected == 2
        assert "spans[1] " in message and "spans[2] " in message
        assert "messaging.consumer.group.name: a new stream or group, and the collector has 2 " \
            "of its limit of 2 (--max-series)" in message  # fmt: skip
        # the same record alone on /v1/records
        record: dict[str, Any] = {"stream": "orders", "kind": "consume", "message_id": "d",
                                  "group": "new", "ts": 1.0}  # fmt: skip
        direct = httpx.post(f"{live.url}/v1/records", json=[record])
        assert direct.status_code == 422
        assert direct.json()["detail"]["reason"] in message
    assert sorted(r["message_id"] for r in logged(store)) == ["a", "b", "c", "f"]


def test_the_openapi_document_describes_traces(collector: LiveCollector) -> None:
    doc = httpx.get(f"{collector.url}/openapi.json").json()
    body = doc["paths"]["/v1/traces"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/x-protobuf", "application/json"}
    assert json.dumps(doc)  # serialisable
