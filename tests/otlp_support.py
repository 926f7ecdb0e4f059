"""Building OTLP spans and requests by hand (protobuf), and reading the answers."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

T_NS = 1_700_000_000 * 10**9  # a base time, in the nanoseconds of OTLP
PRODUCER = Span.SPAN_KIND_PRODUCER
CONSUMER = Span.SPAN_KIND_CONSUMER
CLIENT = Span.SPAN_KIND_CLIENT
SERVER = Span.SPAN_KIND_SERVER
INTERNAL = Span.SPAN_KIND_INTERNAL

_ids = itertools.count(1)


def any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    raise TypeError(value)


def attributes(attrs: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def span(
    attrs: Mapping[str, object],
    kind: int = CONSUMER,
    *,
    name: str = "span",
    end_ms: int = 1000,
    error: bool = False,
    links: Sequence[Mapping[str, object]] = (),
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
) -> Span:
    """A span ending `end_ms` after T_NS; fresh ids unless given."""
    n = next(_ids)
    out = Span(
        trace_id=trace_id if trace_id is not None else n.to_bytes(16, "big"),
        span_id=span_id if span_id is not None else n.to_bytes(8, "big"),
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=T_NS + end_ms * 10**6 - 10**6,
        end_time_unix_nano=T_NS + end_ms * 10**6,
        attributes=attributes(attrs),
        links=[
            Span.Link(
                trace_id=(9).to_bytes(16, "big"),
                span_id=(i + 1).to_bytes(8, "big"),
                attributes=attributes(link),
            )
            for i, link in enumerate(links)
        ],
    )
    if error:
        out.status.code = Status.STATUS_CODE_ERROR
    return out


def request(
    spans: Sequence[Span], service: str = "svc", scope: str = "app"
) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=attributes({"service.name": service})),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=spans)],
            )
        ]
    )


def post(url: str, req: ExportTraceServiceRequest, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/traces",
        content=req.SerializeToString(),
        headers={"content-type": "application/x-protobuf", **headers},
    )


def partial(resp: httpx.Response) -> tuple[int, str]:
    """(rejected_spans, error_message) of a protobuf answer."""
    assert resp.status_code == 200, resp.content
    assert resp.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(resp.content)
    return answer.partial_success.rejected_spans, answer.partial_success.error_message


def as_json(req: ExportTraceServiceRequest) -> dict[str, Any]:
    """The request in OTLP/JSON: trace and span ids in hex, not base64."""
    body = json_format.MessageToDict(req)
    for rs in body.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                for obj in (s, *s.get("links", [])):
                    for key in ("traceId", "spanId"):
                        if key in obj:
                            obj[key] = span_hex(obj[key])
    return body


def span_hex(b64: str) -> str:
    import base64

    return base64.b64decode(b64).hex()
