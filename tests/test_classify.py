"""The error class of a failure (msgtally.ingest.shim.classify), on the client
libraries' own exceptions, built as each library raises them."""

from __future__ import annotations

import json
import subprocess
import sys

import confluent_kafka
import httpx
import msgspec
import nats.errors
import nats.js.errors
import paho.mqtt.client as mqtt
import pika.exceptions
import pytest
import redis.exceptions

from msgtally.ingest.shim.classify import (
    LIBRARIES,
    classify,
    http_status_class,
    kafka_error_class,
    mqtt_rc_class,
)
from msgtally.record import ERROR_CLASSES


def _json_error() -> Exception:
    try:
        json.loads("{not json")
    except ValueError as exc:
        return exc
    raise AssertionError("json decoded it")


def _msgspec_error() -> Exception:
    try:
        msgspec.json.decode(b"[1,", type=list[int])
    except msgspec.DecodeError as exc:
        return exc
    raise AssertionError("msgspec decoded it")


def _utf8_error() -> Exception:
    try:
        b"\xff".decode()
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("decoded")


def _status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://example.invalid/hook")
    response = httpx.Response(code, request=request)
    return httpx.HTTPStatusError("status", request=request, response=response)


def _wrapped(cause: BaseException) -> Exception:
    try:
        raise RuntimeError("handler failed") from cause
    except RuntimeError as exc:
        return exc


KE = confluent_kafka.KafkaError
CASES: list[tuple[str, BaseException, str]] = [
    ("builtin timeout", TimeoutError(), "timeout"),
    ("refused", ConnectionRefusedError(), "unavailable"),
    ("reset", ConnectionResetError(), "unavailable"),
    ("json", _json_error(), "serialization"),
    ("msgspec", _msgspec_error(), "serialization"),
    ("utf-8", _utf8_error(), "serialization"),
    ("a full buffer", BufferError("Local: Queue full"), "throttled"),
    ("a plain bug", ValueError("bad total"), "other"),
    ("a wrapped refusal", _wrapped(ConnectionRefusedError()), "unavailable"),
    ("a wrapped bug", _wrapped(KeyError("x")), "other"),
    ("pika auth", pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"), "auth"),
    ("pika access", pika.exceptions.ProbableAccessDeniedError(), "auth"),
    ("pika closed 403", pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED"), "auth"),
    ("pika closed 404", pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND"), "unavailable"),
    ("pika nack", pika.exceptions.NackError([]), "throttled"),
    ("pika unroutable", pika.exceptions.UnroutableError([]), "unavailable"),
    ("pika lost", pika.exceptions.StreamLostError(), "unavailable"),
    ("pika down", pika.exceptions.AMQPConnectionError(), "unavailable"),
    ("pika heartbeat", pika.exceptions.AMQPHeartbeatTimeout(), "timeout"),
    ("nats timeout", nats.errors.TimeoutError(), "timeout"),
    ("nats auth", nats.errors.AuthorizationError(), "auth"),
    # what nats-py raises on connect when the server refuses the credentials
    ("nats refused on connect", nats.errors.Error("nats: 'Authorization Violation'"), "auth"),
    ("nats too many", nats.errors.Error("nats: 'maximum connections exceeded'"), "throttled"),
    ("nats other -ERR", nats.errors.Error("nats: 'Unknown Protocol Operation'"), "other"),
    ("nats no servers", nats.errors.NoServersError(), "unavailable"),
    ("nats no responders", nats.errors.NoRespondersError(), "unavailable"),
    ("nats slow consumer", nats.errors.SlowConsumerError("s", "", 1, None), "throttled"),
    ("jetstream unavailable", nats.js.errors.ServiceUnavailableError(), "unavailable"),
    ("redis auth", redis.exceptions.AuthenticationError("invalid password"), "auth"),
    ("redis noperm", redis.exceptions.ResponseError("NOPERM this user has no rights"), "auth"),
    ("redis oom", redis.exceptions.ResponseError("OOM command not allowed"), "throttled"),
    ("redis oom class", redis.exceptions.OutOfMemoryError("OOM"), "throttled"),
    ("redis busy", redis.exceptions.BusyLoadingError(), "unavailable"),
    ("redis down", redis.exceptions.ConnectionError(), "unavailable"),
    ("redis timeout", redis.exceptions.TimeoutError(), "timeout"),
    ("redis bad command", redis.exceptions.ResponseError("ERR wrong number"), "other"),
    ("httpx timeout", httpx.ReadTimeout("slow"), "timeout"),
    ("httpx connect", httpx.ConnectError("refused"), "unavailable"),
    ("httpx 401", _status(401), "auth"),
    ("httpx 429", _status(429), "throttled"),
    ("httpx 503", _status(503), "unavailable"),
    ("kafka timed out", confluent_kafka.KafkaException(KE(KE._MSG_TIMED_OUT)), "timeout"),
    ("kafka sasl", confluent_kafka.KafkaException(KE(KE.SASL_AUTHENTICATION_FAILED)), "auth"),
    ("kafka down", confluent_kafka.KafkaException(KE(KE._ALL_BROKERS_DOWN)), "unavailable"),
    ("kafka value", confluent_kafka.error.ValueDeserializationError(), "serialization"),
    ("kafka other", confluent_kafka.KafkaException(KE(KE.INVALID_CONFIG)), "other"),
]


@pytest.mark.parametrize(("exc", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_library_s_failures_have_their_class(exc: BaseException, want: str) -> None:
    assert classify(exc) == want


def test_codes_and_statuses() -> None:
    assert kafka_error_class(KE(KE._MSG_TIMED_OUT)) == "timeout"
    assert kafka_error_class(KE(KE.TOPIC_AUTHORIZATION_FAILED)) == "auth"
    assert kafka_error_class(KE(KE._QUEUE_FULL)) == "throttled"
    assert kafka_error_class("not an error") == "other"
    assert mqtt_rc_class(mqtt.MQTT_ERR_NO_CONN) == "unavailable"
    assert mqtt_rc_class(mqtt.MQTT_ERR_QUEUE_SIZE) == "throttled"
    assert mqtt_rc_class(int(mqtt.MQTT_ERR_NO_CONN)) == "unavailable"  # paho 1's plain int
    assert mqtt_rc_class(mqtt.MQTT_ERR_PAYLOAD_SIZE) == "other"
    got = {code: http_status_class(code) for code in (400, 401, 403, 404, 408, 422, 429, 500,
                                                      502, 503, 504)}  # fmt: skip
    assert got == {400: "serialization", 401: "auth", 403: "auth", 404: "other",
                   408: "timeout", 422: "serialization", 429: "throttled", 500: "other",
                   502: "unavailable", 503: "unavailable", 504: "timeout"}  # fmt: skip


def test_every_class_named_is_in_the_vocabulary() -> None:
    named = {c for table in LIBRARIES.values() for c in table.values()}
    assert named <= set(ERROR_CLASSES)
    assert {classify(c[1]) for c in CASES} <= set(ERROR_CLASSES)


def test_classifying_imports_no_client_library() -> None:
    """A service with none of the brokers' clients installed imports it as it is."""
    code = (
        "import sys; import msgtally.ingest.shim.classify as c; "
        "c.classify(TimeoutError()); "
        "print(sorted({'pika', 'nats', 'redis', 'httpx', 'confluent_kafka', 'paho'} "
        "& set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
