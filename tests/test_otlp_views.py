"""The C reader of span views (ingest/intake/otlp/_spans.c) against the official types:
every span of every request maps to the same records, ignored reasons and
refusals whichever reads it. Requests are random, and so are their bytes:
messages merged on the wire (a field twice), wire types the mapping does not
expect, unknown fields, and bytes flipped or cut."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from msgtally.ingest.intake.otlp import export
from msgtally.ingest.intake.otlp.export import Outcome, map_request, read_views
from msgtally.ingest.intake.otlp.mapping import _WANTED, WANTED_KEYS, SpanView, view_of
from tests.depth import examples

_spans = pytest.importorskip("msgtally.ingest.intake.otlp._spans")

KEYS = [*sorted(_WANTED), "messaging.system", "messaging.", "messaging", "server.port", "x", ""]
TEXT = st.sampled_from(
    [
        "",
        "a",
        "orders",
        "dead_letter",
        "dead_letter q",
        "process",
        "send",
        "settle",
        "receive",
        "deliver",
        "\x00",
        "é€😀",
        "publish",
    ]
)


def _scalar() -> st.SearchStrategy[AnyValue]:
    return st.one_of(
        TEXT.map(lambda v: AnyValue(string_value=v)),
        st.text(max_size=5).map(lambda v: AnyValue(string_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        st.sampled_from([0, 1, 2, 3, -1, 2**63 - 1, -(2**63)]).map(lambda v: AnyValue(int_value=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: AnyValue(int_value=v)),
        st.floats(allow_nan=False).map(lambda v: AnyValue(double_value=v)),
        st.binary(max_size=4).map(lambda v: AnyValue(bytes_value=v)),
        st.just(AnyValue()),
    )


def _value() -> st.SearchStrategy[AnyValue]:
    scalar = _scalar()
    return st.one_of(
        scalar,
        scalar,
        st.lists(scalar, max_size=2).map(lambda v: AnyValue(array_value=ArrayValue(values=v))),
        st.lists(st.tuples(TEXT, scalar), max_size=2).map(
            lambda kv: AnyValue(
                kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kv])
            )
        ),
    )


KEY_VALUES = st.lists(
    st.builds(
        lambda k, v, has: KeyValue(key=k, value=v) if has else KeyValue(key=k),
        st.sampled_from(KEYS),
        _value(),
        st.booleans(),
    ),
    max_size=8,
)
IDS16 = st.sampled_from([b"", bytes(16), bytes(8)]) | st.binary(min_size=16, max_size=16)
IDS8 = st.sampled_from([b"", bytes(8), bytes(16)]) | st.binary(min_size=8, max_size=8)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(IDS16),
        span_id=draw(IDS8),
        name=draw(TEXT),
        kind=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 9, -1])),  # type: ignore[arg-type]
        end_time_unix_nano=draw(st.sampled_from([0, 1, 1_700_000_000 * 10**9, 2**64 - 1])),
        attributes=draw(KEY_VALUES),
    )
    for _ in range(draw(st.integers(0, 3))):
        span.links.add(trace_id=draw(IDS16), span_id=draw(IDS8), attributes=draw(KEY_VALUES))
    code = draw(st.sampled_from([None, 0, 1, 2, 7]))
    if code is not None:
        span.status.code = code  # type: ignore[assignment]
        span.status.message = draw(TEXT)
    return span


def _varint(n: int) -> bytes:
    n &= 2**64 - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# Bytes appended to a span's own: the official decoder merges or skips them.
EXTRAS = st.one_of(
    st.just(b""),
    spans().map(lambda s: s.SerializeToString()),  # the span twice: merged
    st.builds(
        lambda a, b: _field(9, a.SerializeToString() + b.SerializeToString()),
        st.sampled_from(KEYS).flatmap(
            lambda k: KEY_VALUES.map(
                lambda kvs: KeyValue(key=k, value=kvs[0].value if kvs else AnyValue())
            )
        ),
        KEY_VALUES.map(lambda kvs: kvs[0] if kvs else KeyValue()),
    ),
    st.builds(
        lambda k, a, b: _field(
            9, _field(1, k.encode()) + _field(2, a.SerializeToString() + b.SerializeToString())
        ),
        st.sampled_from(KEYS),
        _scalar(),
        _scalar(),
    ),  # a value set twice
    st.sampled_from([0, 1, 2, 7]).map(lambda c: _field(15, Status(code=c).SerializeToString())),  # type: ignore[arg-type]
    st.sampled_from(
        [
            bytes([1 << 3 | 0, 5]),  # trace_id as a varint: a wire type the field does not have
            bytes([6 << 3 | 2, 1, 3]),  # kind as bytes
            bytes([8 << 3 | 0, 7]),  # end as a varint
            _varint(99 << 3 | 0) + b"\x01",  # an unknown field
            _varint(99 << 3 | 5) + b"\x01\x02\x03\x04",
            _field(100, b"xyz"),
        ]
    ),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """An ExportTraceServiceRequest's bytes, written field by field."""
    body = b""
    for _ in range(draw(st.integers(1, 2))):
        service = draw(
            st.one_of(
                st.just(b""),
                st.builds(
                    lambda v: Resource(
                        attributes=[KeyValue(key="service.name", value=v)]
                    ).SerializeToString(),
                    _value(),
                ),
            )
        )
        resource = _field(1, service) if service else b""
        for _ in range(draw(st.integers(0, 2))):
            name = draw(st.sampled_from(["msgtally", "app", ""]))
            scope = _field(1, InstrumentationScope(name=name).SerializeToString())
            for _ in range(draw(st.integers(0, 4))):
                scope += _field(2, draw(spans()).SerializeToString() + draw(EXTRAS))
            resource += _field(2, scope)
        body += _field(1, resource)
    return body


def _mapped(request: ExportTraceServiceRequest, body: bytes | None) -> tuple[Any, ...]:
    """What the mapping and the contract made of every span."""
    outcome = Outcome()
    spans = map_request(request, outcome, body)
    mapped = [(s.place, s.path, s.mapped) for s in spans]
    kept = export._check(spans, outcome)
    records = [(s.place, s.records) for s in kept]
    return mapped, records, dict(outcome.spans), outcome.refusals, outcome.message()


def _same_view(fast: SpanView, slow: SpanView) -> None:
    *head, links = fast
    *slow_head, slow_links = slow
    assert _plain(head) == _plain(slow_head)
    assert _plain(list(links)) == _plain(list(slow_links))


def _plain(value: object) -> object:
    """Comparable: a float by its bits (0.0 and -0.0 differ), a type by its name."""
    if isinstance(value, float):
        return ("float", math.copysign(1, value), value)
    if isinstance(value, dict):
        return {k: (type(v).__name__, _plain(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [(type(v).__name__, _plain(v)) for v in value]
    return value


def _check_body(body: bytes) -> None:
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError:
        return
    views = read_views(request, body)
    if views is not None:
        for i, rs in enumerate(request.resource_spans):
            for j, ss in enumerate(rs.scope_spans):
                for k, span in enumerate(ss.spans):
                    view = views[i][j][k]
                    if view is not None:
                        _same_view(view, view_of(span))
    assert _mapped(request, body) == _mapped(request, None)


# 50 random requests per test in the README's run; 300 deep (tests/depth.py),
# as under the sanitizers, where a wrong read shows as the memory error it is.
SETTINGS = settings(
    max_examples=examples(50, 300),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@SETTINGS
@given(bodies())
def test_the_c_reader_maps_every_span_as_the_official_types(body: bytes) -> None:
    _check_body(body)


@SETTINGS
@given(bodies(), st.data())
def test_damaged_bytes_never_crash_the_reader_and_map_the_same(
    body: bytes, data: st.DataObject
) -> None:
    damaged = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        if not damaged:
            break
        at = data.draw(st.integers(0, len(damaged) - 1))
        damaged[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    for candidate in (bytes(damaged), bytes(damaged[:cut]), body[:cut]):
        _spans.views(candidate, WANTED_KEYS)  # whatever the bytes: no crash
        _check_body(candidate)


@SETTINGS
@given(spans())
def test_plain_spans_are_read_by_the_c_reader(span: Span) -> None:
    """The fast path is taken: a span whose wanted attributes are all scalars
    (one value each) gets a view, the one the official types give."""
    kvs: Sequence[KeyValue] = [*span.attributes, *(kv for ln in span.links for kv in ln.attributes)]
    assume(
        all(
            kv.value.WhichOneof("value") not in ("array_value", "kvlist_value")
            for kv in kvs
            if kv.key in _WANTED
        )
    )
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    views = _spans.views(request.SerializeToString(), WANTED_KEYS)
    assert views is not None
    view = views[0][0][0]
    assert view is not None
    _same_view(view, view_of(span))


@pytest.mark.parametrize(
    "value",
    [
        AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="m1")])),
        AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="a")])),
    ],
)
def test_a_wanted_array_or_kvlist_is_left_to_the_official_types(value: AnyValue) -> None:
    span = Span(attributes=[KeyValue(key="messaging.message.id", value=value)])
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    body = request.SerializeToString()
    assert _spans.views(body, WANTED_KEYS) == [[[None]]]
    other = Span(attributes=[KeyValue(key="other", value=value)])  # not read: no need
    request.resource_spans[0].scope_spans[0].spans[0].CopyFrom(other)
    assert _spans.views(request.SerializeToString(), WANTED_KEYS) != [[[None]]]
