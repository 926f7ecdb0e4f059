"""The span -> delivery record mapping (the table of docs/shim.md), span by span."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanType

from msgtally.ingest.intake.otlp.errortype import error_class_of
from msgtally.ingest.intake.otlp.mapping import (
    FROM_SHIM,
    NO_MESSAGE_ID,
    NOT_A_DELIVERY,
    NOT_MESSAGING,
    Ignored,
    Mapped,
    Refused,
    map_span,
)
from tests.otlp_support import CLIENT, CONSUMER, INTERNAL, PRODUCER, SERVER, T_NS, span

TS = (T_NS + 10**9) / 1e9  # the end of every span below (end_ms=1000)
SEND = {"messaging.system": "kafka", "messaging.destination.name": "orders",
        "messaging.message.id": "m1"}  # fmt: skip


def records(s: SpanType, service: object = "svc", scope: str = "app") -> list[dict[str, Any]]:
    mapped = map_span(s, scope, service)
    assert isinstance(mapped, Mapped), mapped
    return mapped.records


def one(s: SpanType, service: object = "svc") -> dict[str, Any]:
    (record,) = records(s, service)
    assert record.pop("trace_id") == s.trace_id.hex()
    assert record.pop("span_id") == s.span_id.hex()
    assert record.pop("record_id") == f"otlp:{s.trace_id.hex()}{s.span_id.hex()}"
    return record


def produce(**extra: Any) -> dict[str, Any]:
    return {"kind": "produce", "ts": TS, "stream": "orders", "message_id": "m1", **extra}


def consume(group: str = "svc", **extra: Any) -> dict[str, Any]:
    return {"kind": "consume", "ts": TS, "stream": "orders", "message_id": "m1", "group": group,
            **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "attrs", "expected"),
    [
        # produce: a PRODUCER span, or the send operations on any span
        (PRODUCER, {}, produce()),
        (PRODUCER, {"messaging.operation.type": "send"}, produce()),
        (CLIENT, {"messaging.operation.type": "publish"}, produce()),
        (INTERNAL, {"messaging.operation.type": "create"}, produce()),
        (CLIENT, {"messaging.operation": "publish"}, produce()),  # deprecated name
        # consume: process or deliver, or a CONSUMER span of conventions without operations
        (CONSUMER, {}, consume()),
        (CONSUMER, {"messaging.operation.type": "process"}, consume()),
        (CONSUMER, {"messaging.operation.type": "deliver"}, consume()),
        (CONSUMER, {"messaging.operation": "process"}, consume()),
    ],
)
def test_what_is_a_produce_and_a_consume(
    kind: int, attrs: dict[str, object], expected: dict[str, Any]
) -> None:
    assert one(span({**SEND, **attrs}, kind)) == expected


@pytest.mark.parametrize(
    ("kind", "attrs", "scope", "reason"),
    [
        (CONSUMER, {"messaging.operation.type": "receive"}, "app", NOT_A_DELIVERY),
        (CLIENT, {"messaging.operation.type": "receive"}, "app", NOT_A_DELIVERY),
        (CONSUMER, {"messaging.operation": "receive"}, "app", NOT_A_DELIVERY),
        (CLIENT, {"messaging.operation.type": "settle", "messaging.operation.name": "complete"},
         "app", NOT_A_DELIVERY),
        (SERVER, {}, "app", NOT_A_DELIVERY),
        (INTERNAL, {}, "app", NOT_A_DELIVERY),
        (PRODUCER, {}, "msgtally", FROM_SHIM),  # the shim sent this record itself
    ],
)  # fmt: skip
def test_spans_that_are_no_delivery_are_ignored(
    kind: int, attrs: dict[str, object], scope: str, reason: str
) -> None:
    assert map_span(span({**SEND, **attrs}, kind), scope, "svc") == Ignored(reason)


def test_spans_without_messaging_or_without_a_message_id_are_ignored() -> None:
    http = span({"http.request.method": "GET", "url.path": "/orders"}, SERVER)
    assert map_span(http, "app", "svc") == Ignored(NOT_MESSAGING)
    assert map_span(span({}, PRODUCER), "app", "svc") == Ignored(NOT_MESSAGING)
    no_id = {k: v for k, v in SEND.items() if k != "messaging.message.id"}
    assert map_span(span(no_id, PRODUCER), "app", "svc") == Ignored(NO_MESSAGE_ID)
    assert map_span(span(no_id, CONSUMER), "app", "svc") == Ignored(NO_MESSAGE_ID)


def test_stream_and_message_id_deprecated_names() -> None:
    old = {"messaging.destination": "orders", "messaging.message_id": "m1"}
    assert one(span(old, PRODUCER)) == produce()
    both = {**SEND, "messaging.destination": "old-name"}
    assert one(span(both, PRODUCER)) == produce()  # the current name wins


@pytest.mark.parametrize(
    ("attrs", "group"),
    [
        ({"messaging.consumer.group.name": "billing",
          "messaging.destination.subscription.name": "sub", "messaging.kafka.consumer.group": "k"},
         "billing"),
        ({"messaging.destination.subscription.name": "sub",
          "messaging.kafka.consumer.group": "k"}, "sub"),
        ({"messaging.servicebus.destination.subscription_name": "sb-sub"}, "sb-sub"),
        ({"messaging.kafka.consumer.group": "k"}, "k"),
        ({"messaging.eventhubs.consumer.group": "eh"}, "eh"),
        ({}, "svc"),  # no group attribute: the consuming service is the group
    ],
)  # fmt: skip
def test_the_consumer_group(attrs: dict[str, object], group: str) -> None:
    assert one(span({**SEND, **attrs}, CONSUMER)) == consume(group)


def test_a_consume_without_group_nor_service_has_no_group() -> None:
    # The record contract refuses it then ("field required"), as on /v1/records.
    (record,) = records(span(SEND, CONSUMER), service=None)
    assert "group" not in record


@pytest.mark.parametrize(
    "key",
    [
        "msgtally.attempt",
        "messaging.gcp_pubsub.message.delivery_attempt",
        "azure.servicebus.message.delivery_count",
        "messaging.servicebus.message.delivery_count",
    ],
)
def test_the_attempt(key: str) -> None:
    assert one(span({**SEND, key: 3}, CONSUMER)) == consume(attempt=3)
    assert one(span({**SEND, key: 2}, PRODUCER)) == produce(attempt=2)


def test_msgtally_attempt_wins_over_the_brokers_count() -> None:
    attrs = {**SEND, "msgtally.attempt": 4, "messaging.gcp_pubsub.message.delivery_attempt": 9}
    assert one(span(attrs, CONSUMER)) == consume(attempt=4)


def test_the_outcome() -> None:
    assert one(span(SEND, PRODUCER, error=True)) == produce(outcome="error")
    assert one(span(SEND, CONSUMER, error=True)) == consume(outcome="error")
    dead = {**SEND, "msgtally.outcome": "dead_letter"}
    assert one(span(dead, CONSUMER, error=True)) == consume(outcome="dead_letter")
    # msgtally.outcome is taken as it is; the contract judges it (a produce cannot dead-letter)
    assert one(span(dead, PRODUCER)) == produce(outcome="dead_letter")
    assert one(span({**SEND, "msgtally.outcome": "ok"}, CONSUMER, error=True)) == consume(
        outcome="ok"
    )


def test_error_type_gives_the_class_of_a_failure() -> None:
    timeout = {**SEND, "error.type": "java.net.SocketTimeoutException"}
    assert one(span(timeout, CONSUMER, error=True)) == consume(outcome="error", error="timeout")
    # error.type is set only when the operation failed: it alone says so
    assert one(span(timeout, PRODUCER)) == produce(outcome="error", error="timeout")
    dead = {**timeout, "msgtally.outcome": "dead_letter", "error.type": "JsonParseException"}
    assert one(span(dead, CONSUMER)) == consume(outcome="dead_letter", error="serialization")
    # an explicit ok outcome wins: a record that says ok has no class
    ok = {**timeout, "msgtally.outcome": "ok"}
    assert one(span(ok, CONSUMER, error=True)) == consume(outcome="ok")
    # a failure without error.type is not classified
    assert one(span(SEND, CONSUMER, error=True)) == consume(outcome="error")
    assert map_span(span({**SEND, "error.type": True}, PRODUCER), "app", "svc") == Refused(
        "error.type: must be a string, got a boolean"
    )


@pytest.mark.parametrize(
    ("value", "error_class"),
    [
        ("timeout", "timeout"), ("Poison", "poison"), ("other", "other"),
        ("DEADLINE_EXCEEDED", "timeout"), ("UNAUTHENTICATED", "auth"),
        ("PERMISSION_DENIED", "auth"), ("RESOURCE_EXHAUSTED", "throttled"),
        ("UNAVAILABLE", "unavailable"), ("DATA_LOSS", "serialization"),
        ("401", "auth"), ("429", "throttled"), ("503", "unavailable"), ("504", "timeout"),
        ("500", "other"), (422, "serialization"),
        ("builtins.TimeoutError", "timeout"), ("TimeoutError", "timeout"),
        ("pika.exceptions.ProbableAuthenticationError", "auth"),
        ("redis.exceptions.ConnectionError", "unavailable"),
        ("httpx.ConnectTimeout", "timeout"),
        ("json.decoder.JSONDecodeError", "serialization"),
        ("org.apache.kafka.common.errors.SaslAuthenticationException", "auth"),
        ("org.apache.kafka.common.errors.NotLeaderOrFollowerException", "unavailable"),
        ("org.apache.kafka.common.errors.RecordDeserializationException", "serialization"),
        ("software.amazon.awssdk.services.sqs.model.OverLimitException", "other"),
        ("ThrottlingException", "throttled"), ("QuotaExceededError", "throttled"),
        ("System.UnauthorizedAccessException", "auth"),
        ("java.net.ConnectException", "unavailable"), ("ECONNREFUSED", "unavailable"),
        ("ETIMEDOUT", "timeout"),
        ("java.lang.NullPointerException", "other"), ("_OTHER", "other"),
    ],
)  # fmt: skip
def test_error_type_values(value: str | int, error_class: str) -> None:
    assert error_class_of(value) == error_class


@pytest.mark.parametrize(
    ("name", "attrs"),
    [
        ("dead_letter", {}),
        ("dead_letter orders", {}),
        ("settle", {"messaging.operation.name": "dead_letter"}),
        ("settle", {"messaging.servicebus.disposition_status": "dead_letter"}),
    ],
)
def test_a_service_bus_dead_letter_settlement_is_a_dead_letter(
    name: str, attrs: dict[str, object]
) -> None:
    settle = {**SEND, "messaging.operation.type": "settle",
              "messaging.destination.subscription.name": "sub", **attrs}  # fmt: skip
    assert one(span(settle, CLIENT, name=name)) == consume("sub", outcome="dead_letter")


def test_a_batch_is_one_record_per_link_that_names_a_message() -> None:
    attrs = {"messaging.system": "kafka", "messaging.destination.name": "orders",
             "messaging.operation.type": "process", "messaging.batch.message_count": 3,
             "messaging.consumer.group.name": "billing"}  # fmt: skip
    links = [{"messaging.message.id": "a"}, {"other": 1}, {"messaging.message.id": "c"}]
    s = span(attrs, CONSUMER, links=links)
    got = records(s)
    base = f"otlp:{s.trace_id.hex()}{s.span_id.hex()}"
    assert [(r["message_id"], r["record_id"], r["group"]) for r in got] == [
        ("a", f"{base}:0", "billing"),
        ("c", f"{base}:2", "billing"),
    ]
    assert map_span(span(attrs, CONSUMER, links=[{"other": 1}]), "app", "svc") == Ignored(
        NO_MESSAGE_ID
    )
    # A "batch" of one is the span's own message.
    single = {**SEND, "messaging.batch.message_count": 1}
    assert one(span(single, PRODUCER, links=[{"messaging.message.id": "x"}])) == produce()


@pytest.mark.parametrize(
    ("attrs", "kwargs", "reason"),
    [
        ({"messaging.operation.type": 3}, {},
         "messaging.operation.type: must be a string, got an integer"),
        ({"messaging.batch.message_count": "3"}, {},
         "messaging.batch.message_count: must be an integer, got a string"),
        ({"messaging.message.id": b"\x01\x02"}, {}, "messaging.message.id: must not be bytes"),
        ({"messaging.destination.name": b"x"}, {}, "messaging.destination.name: must not be bytes"),
        ({}, {"trace_id": bytes(16)}, "traceId: must be 16 bytes, not all zero"),
        ({}, {"trace_id": b"\x01" * 8}, "traceId: must be 16 bytes, not all zero"),
        ({}, {"span_id": bytes(8)}, "spanId: must be 8 bytes, not all zero"),
    ],
)  # fmt: skip
def test_attributes_that_cannot_be_read_refuse_the_span(
    attrs: dict[str, object], kwargs: dict[str, Any], reason: str
) -> None:
    assert map_span(span({**SEND, **attrs}, PRODUCER, **kwargs), "app", "svc") == Refused(reason)


def test_a_span_without_end_time_is_refused() -> None:
    s = span(SEND, PRODUCER)
    s.end_time_unix_nano = 0
    assert map_span(s, "app", "svc") == Refused("endTimeUnixNano: not set")


def test_the_record_id_comes_from_the_span_so_a_resend_is_the_same_record() -> None:
    s = span(SEND, PRODUCER)
    again = type(s).FromString(s.SerializeToString())
    assert records(s) == records(again)
    other = span(SEND, PRODUCER)  # the same message, another span: another record
    assert records(other)[0]["record_id"] != records(s)[0]["record_id"]


def test_wrong_types_pass_to_the_contract_with_their_source() -> None:
    mapped = map_span(span({**SEND, "msgtally.attempt": "3"}, CONSUMER), "app", "svc")
    assert isinstance(mapped, Mapped)
    assert mapped.records[0]["attempt"] == "3"  # refused by the contract: must be an integer
    assert mapped.source(0, "attempt") == "msgtally.attempt"
    assert mapped.source(0, "group") == "resource service.name"
    assert mapped.source(0, "message_id") == "messaging.message.id"
