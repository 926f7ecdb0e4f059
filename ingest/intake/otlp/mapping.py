"""Messaging spans -> delivery records: README's mapping table, as pure functions.

A span maps to records in the wire form a shim posts to /v1/records, or is
ignored (it is not the delivery of a message we can name), or is refused (an
attribute the conventions define cannot be read as they define it). The
records are then checked by the record contract itself (ingest.schema, in
`export`), so a record from a span is accepted or refused exactly as on
/v1/records.

The mapping reads a span through its *view* (`SpanView`): the few fields and
attributes it looks at. `view_of` makes one from the official `Span`; the C
extension `_spans` makes them straight from a protobuf body, without a Python
object per attribute, and leaves to `view_of` any span it does not read as
the official types would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from msgtally.ingest.intake.otlp.errortype import ERROR_TYPE, error_class_of
from msgtally.ingest.shim.tracing import (
    ATTEMPT,
    CONSUMER_GROUP,
    DESTINATION,
    MESSAGE_ID,
    OPERATION_TYPE,
    OUTCOME,
)

# Where a field is read: the first attribute present wins (current, then deprecated names).
DESTINATIONS: Final = (DESTINATION, "messaging.destination")
MESSAGE_IDS: Final = (MESSAGE_ID, "messaging.message_id")
OPERATIONS: Final = (OPERATION_TYPE, "messaging.operation")
GROUPS: Final = (
    CONSUMER_GROUP,
    "messaging.destination.subscription.name",  # Pub/Sub, Service Bus topics
    "messaging.servicebus.destination.subscription_name",
    "messaging.kafka.consumer.group",
    "messaging.eventhubs.consumer.group",
    "messaging.rocketmq.client_group",
)
ATTEMPTS: Final = (
    ATTEMPT,
    "messaging.gcp_pubsub.message.delivery_attempt",
    "azure.servicebus.message.delivery_count",
    "messaging.servicebus.message.delivery_count",
)
SETTLEMENTS: Final = ("messaging.operation.name", "messaging.servicebus.disposition_status")
BATCH_COUNT: Final = "messaging.batch.message_count"
SERVICE_NAME: Final = "service.name"
SHIM_SCOPE: Final = "msgtally"  # the tracer name of msgtally.ingest.shim.tracing

PRODUCE_OPERATIONS: Final = frozenset({"send", "create", "publish"})
CONSUME_OPERATIONS: Final = frozenset({"process", "deliver"})
DEAD_LETTER: Final = "dead_letter"

# Why a span gave no record (the `result` label of msgtally_otlp_spans_total).
FROM_SHIM: Final = "from_shim"  # the shim sent its records itself
NOT_MESSAGING: Final = "not_messaging"
NOT_A_DELIVERY: Final = "not_a_delivery"  # receive, settle, client and internal spans
NO_MESSAGE_ID: Final = "no_message_id"
IGNORED: Final = (FROM_SHIM, NOT_MESSAGING, NOT_A_DELIVERY, NO_MESSAGE_ID)

_WANTED: Final = frozenset(
    (*DESTINATIONS, *MESSAGE_IDS, *OPERATIONS, *GROUPS, *ATTEMPTS, *SETTLEMENTS,
     BATCH_COUNT, OUTCOME, ERROR_TYPE)
)  # fmt: skip
WANTED_KEYS: Final = tuple(sorted(_WANTED))  # for _spans.views
_Id = tuple[int | None, str, object]  # (link index, attribute, message id)
Attrs = dict[str, object]  # the attributes in _WANTED a span or link has

# A span as the mapping reads it: (trace_id, span_id, name, kind,
# end_time_unix_nano, status code, attributes in _WANTED, whether any attribute
# is a messaging one, per link its attributes in _WANTED). A plain tuple: the
# C extension makes one per span.
SpanView = tuple[bytes, bytes, str, int, int, int, Attrs, bool, Sequence[Attrs]]
# Per resourceSpans, per scopeSpans, per span its view (None: not read by _spans).
Views = list[list[list[SpanView | None]]]
_FROM_ATTRIBUTES: Final = ("stream", "group", "attempt", "outcome")  # a record's fields
_ZERO_TRACE: Final = bytes(16)
_ZERO_SPAN: Final = bytes(8)


class Mapped(NamedTuple):
    """A span's records, and where their fields were read (for refusals)."""

    records: list[dict[str, Any]]
    sources: dict[str, str]  # field -> attribute, shared by the records
    id_sources: list[str]  # per record: the attribute of its message id

    def source(self, index: int, field: str) -> str:
        """Where record `index`'s `field` was read."""
        if field == "message_id":
            return self.id_sources[index]
        return self.sources.get(field, field)


class Ignored(NamedTuple):
    reason: str  # one of IGNORED


class Refused(NamedTuple):
    reason: str  # "<attribute>: <why>"


def value_of(v: AnyValue) -> object:
    """An attribute value as the plain Python value it holds (None when empty)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def service_name(resource: Resource) -> object:
    """The resource's service.name, None when it has none."""
    for kv in resource.attributes:
        if kv.key == SERVICE_NAME:
            return value_of(kv.value)
    return None


def _read(kvs: Iterable[KeyValue]) -> tuple[Attrs, bool]:
    """The attributes the mapping reads, and whether any is a messaging attribute."""
    found: Attrs = {}
    messaging = False
    for kv in kvs:  # the hot loop of OTLP ingest (bench/otlp_rate.py)
        key = kv.key
        if key in _WANTED:
            value = kv.value
            text = value.string_value  # most are text: one access instead of two
            found[key] = text if text else value_of(value)
        if not messaging and key.startswith("messaging."):
            messaging = True
    return found, messaging


class _Links(Sequence[Attrs]):
    """A span's links' attributes, read only when the mapping asks (a batch)."""

    __slots__ = ("_links",)

    def __init__(self, links: Sequence[Span.Link]) -> None:
        self._links = links

    def __len__(self) -> int:
        return len(self._links)

    def __getitem__(self, i: int) -> Attrs:  # type: ignore[override]
        return _read(self._links[i].attributes)[0]

    def __iter__(self) -> Iterator[Attrs]:
        return (_read(link.attributes)[0] for link in self._links)


def view_of(span: Span) -> SpanView:
    """The view of a span read with the official types."""
    attrs, messaging = _read(span.attributes)
    return (span.trace_id, span.span_id, span.name, span.kind, span.end_time_unix_nano,
            span.status.code, attrs, messaging, _Links(span.links))  # fmt: skip


def _first(attrs: Attrs, keys: tuple[str, ...]) -> tuple[str | None, object]:
    for key in keys:
        if key in attrs:
            return key, attrs[key]
    return None, None


def _kind_of(value: object) -> str:
    for types, name in (
        (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
        (list, "an array"), (dict, "an object"), (bytes, "bytes"),
    ):  # fmt: skip
        if isinstance(value, types):
            return name
    return "null"


def _role(kind: int, name: str, operation: str | None, attrs: Attrs) -> str | None:
    """produce, consume, dead_letter (a dead-lettering settle), or None: not a delivery."""
    if operation is None:  # conventions before operation types: the span kind says
        if kind == Span.SPAN_KIND_PRODUCER:
            return "produce"
        return "consume" if kind == Span.SPAN_KIND_CONSUMER else None
    if operation in PRODUCE_OPERATIONS:
        return "produce"
    if operation in CONSUME_OPERATIONS:
        return "consume"
    if operation == "settle" and (
        any(attrs.get(key) == DEAD_LETTER for key in SETTLEMENTS)
        or name == DEAD_LETTER
        or name.startswith(DEAD_LETTER + " ")
    ):
        return DEAD_LETTER
    return None


def _message_ids(links: Sequence[Attrs], attrs: Attrs) -> list[_Id] | Refused:
    """(link index or None, attribute, message id) of each message the span is about."""
    count = attrs.get(BATCH_COUNT)
    if count is not None and (type(count) is not int):
        return Refused(f"{BATCH_COUNT}: must be an integer, got {_kind_of(count)}")
    if count is None or count <= 1:
        key, mid = _first(attrs, MESSAGE_IDS)
        return [] if key is None else [(None, key, mid)]
    ids: list[_Id] = []
    for i, link in enumerate(links):  # a batch: one message per link that names one
        key, mid = _first(link, MESSAGE_IDS)
        if key is not None:
            ids.append((i, f"links[{i}].{key}", mid))
    return ids


def map_span(span: Span, scope: str, service: object) -> Mapped | Ignored | Refused:
    """The records of one span (`scope`: its instrumentation scope's name; `service`:
    its resource's service.name, the group of last resort)."""
    if scope == SHIM_SCOPE:  # before reading the span
        return Ignored(FROM_SHIM)
    return map_view(view_of(span), scope, service)


def map_view(view: SpanView, scope: str, service: object) -> Mapped | Ignored | Refused:
    """map_span on a span's view."""
    if scope == SHIM_SCOPE:
        return Ignored(FROM_SHIM)
    trace_id, span_id, name, span_kind, end, status, attrs, messaging, links = view
    if not messaging:
        return Ignored(NOT_MESSAGING)
    op_key, operation = _first(attrs, OPERATIONS)
    if operation is not None and not isinstance(operation, str):
        return Refused(f"{op_key}: must be a string, got {_kind_of(operation)}")
    role = _role(span_kind, name, operation, attrs)
    if role is None:
        return Ignored(NOT_A_DELIVERY)
    ids = _message_ids(links, attrs)
    if isinstance(ids, Refused):
        return ids
    if not ids:
        return Ignored(NO_MESSAGE_ID)
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        return Refused("traceId: must be 16 bytes, not all zero")
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        return Refused("spanId: must be 8 bytes, not all zero")
    if not end:
        return Refused("endTimeUnixNano: not set")
    trace_hex, span_hex = trace_id.hex(), span_id.hex()

    kind = "produce" if role == "produce" else "consume"
    # ts: the end of the span for both kinds, as the shim reports them: a send
    # once the broker answered, a delivery once its processing is over.
    base: dict[str, Any] = {
        "kind": kind,
        "ts": end / 1e9,
        "trace_id": trace_hex,
        "span_id": span_hex,
    }
    source = {"kind": op_key or "kind", "ts": "endTimeUnixNano", "trace_id": "traceId",
              "span_id": "spanId", "record_id": "traceId"}  # fmt: skip
    key, value = _first(attrs, DESTINATIONS)
    source["stream"] = key or DESTINATION
    if key is not None:
        base["stream"] = value
    if kind == "consume":
        key, value = _first(attrs, GROUPS)
        if key is None and service is not None:
            key, value = f"resource {SERVICE_NAME}", service
        source["group"] = key or CONSUMER_GROUP
        if key is not None:
            base["group"] = value
    key, value = _first(attrs, ATTEMPTS)
    if key is not None:
        base["attempt"], source["attempt"] = value, key
    if OUTCOME in attrs:
        base["outcome"], source["outcome"] = attrs[OUTCOME], OUTCOME
    elif role == DEAD_LETTER:
        base["outcome"], source["outcome"] = DEAD_LETTER, "messaging.operation.name"
    elif status == Status.STATUS_CODE_ERROR:
        base["outcome"], source["outcome"] = "error", "status"
    error_type = attrs.get(ERROR_TYPE)
    if error_type is not None:  # set only when the operation failed (the conventions)
        if type(error_type) not in (str, int):
            return Refused(f"{ERROR_TYPE}: must be a string, got {_kind_of(error_type)}")
        if "outcome" not in base:
            base["outcome"], source["outcome"] = "error", ERROR_TYPE
        if base["outcome"] != "ok":  # an explicit msgtally.outcome ok wins: no class
            base["error"], source["error"] = error_class_of(error_type), ERROR_TYPE  # type: ignore[arg-type]
    for field in _FROM_ATTRIBUTES:  # in the records' order; the other fields are never bytes
        if type(base.get(field)) is bytes:  # JSON would carry it as base64 text
            return Refused(f"{source[field]}: must not be bytes")

    record_id = f"otlp:{trace_hex}{span_hex}"  # an exporter's retry is the same record
    if len(ids) == 1 and ids[0][0] is None:  # the common case: one message, no copy
        key, mid = ids[0][1], ids[0][2]
        if type(mid) is bytes:
            return Refused(f"{key}: must not be bytes")
        base["message_id"], base["record_id"] = mid, record_id
        return Mapped([base], source, [key])
    records: list[dict[str, Any]] = []
    for link, key, mid in ids:
        if type(mid) is bytes:
            return Refused(f"{key}: must not be bytes")
        records.append({**base, "message_id": mid, "record_id": f"{record_id}:{link}"})
    return Mapped(records, source, [key for _, key, _ in ids])
