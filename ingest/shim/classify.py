"""Error classes of failures: an exception, a broker's error code, an HTTP status.

The class of a failed record (msgtally.record.ERROR_CLASSES) tells an on-call
what went wrong without the logs: a rotated credential (`auth`), a body that
does not decode (`serialization`), a broker that answered too late
(`timeout`) or pushed back (`throttled`), one that is down or unreachable
(`unavailable`), a message consumers kept failing on (`poison`), anything
else (`other`).

Pure functions over tables, one per client library, keyed by the exception
class's top-level package and name: nothing here imports a client library,
so a service with none of them installed imports this module as it is. An
exception is classified by the first of its classes (most derived first)
that a table names, then by its cause (`raise ... from`); docs/adapters.md
has the tables in words.
"""

from __future__ import annotations

from typing import Any

from msgtally.record import ERROR_CLASSES

__all__ = [
    "LIBRARIES",
    "classify",
    "http_status_class",
    "kafka_error_class",
    "markdown",
    "mqtt_rc_class",
    "mqtt_reason_class",
]

# package -> {exception class name: error class}. The builtins first: a
# library's own class, being more derived, is met first along the MRO.
LIBRARIES: dict[str, dict[str, str]] = {
    "builtins": {
        "TimeoutError": "timeout",  # socket.timeout and asyncio.TimeoutError too
        "ConnectionError": "unavailable",  # refused, reset, aborted, broken pipe
        "UnicodeDecodeError": "serialization",
        "UnicodeEncodeError": "serialization",
        "BufferError": "throttled",  # a client's queue is full (confluent-kafka's produce)
    },
    "asyncio": {"TimeoutError": "timeout"},
    "concurrent": {"TimeoutError": "timeout"},
    "json": {"JSONDecodeError": "serialization"},
    "msgspec": {"DecodeError": "serialization", "EncodeError": "serialization",
                "ValidationError": "serialization"},
    "pika": {
        "ProbableAuthenticationError": "auth", "AuthenticationError": "auth",
        "ProbableAccessDeniedError": "auth",
        "AMQPHeartbeatTimeout": "timeout",
        "ConnectionBlockedTimeout": "throttled",  # a resource alarm blocked the connection
        "NackError": "throttled",  # the broker refused it: a full queue (reject-publish)
        "UnroutableError": "unavailable",  # a mandatory publish no queue takes
        "BodyTooLongError": "other",
        "ChannelClosedByBroker": "unavailable", "ConnectionClosedByBroker": "unavailable",
        "AMQPConnectionError": "unavailable", "ConnectionClosed": "unavailable",
        "StreamLostError": "unavailable", "ChannelClosed": "unavailable",
        "ChannelWrongStateError": "unavailable", "ConnectionWrongStateError": "unavailable",
    },
    "nats": {
        "AuthorizationError": "auth", "InvalidUserCredentialsError": "auth",
        "TimeoutError": "timeout", "FlushTimeoutError": "timeout",
        "DrainTimeoutError": "timeout", "FetchTimeoutError": "timeout",
        "SlowConsumerError": "throttled", "OutboundBufferLimitError": "throttled",
        "TooManyStalledMsgsError": "throttled",
        "NoServersError": "unavailable", "ConnectionClosedError": "unavailable",
        "StaleConnectionError": "unavailable", "UnexpectedEOF": "unavailable",
        "ConnectionReconnectingError": "unavailable", "ConnectionDrainingError": "unavailable",
        "NoRespondersError": "unavailable", "ServiceUnavailableError": "unavailable",
        "NoStreamResponseError": "unavailable",
        "JsonParseError": "serialization",
        "APIError": "other",  # refined by its code below
        "Error": "other",  # the server's -ERR on connect: refined by its words below
    },
    "redis": {
        "AuthenticationError": "auth", "AuthenticationWrongNumberOfArgsError": "auth",
        "AuthorizationError": "auth", "NoPermissionError": "auth",
        "ExternalAuthProviderError": "auth",
        "TimeoutError": "timeout",
        "OutOfMemoryError": "throttled", "MaxClientsReachedError": "throttled",
        "BusyLoadingError": "unavailable", "ReadOnlyError": "unavailable",
        "MasterDownError": "unavailable", "TryAgainError": "unavailable",
        "ClusterDownError": "unavailable", "ConnectionError": "unavailable",
        "DataError": "serialization",  # a value redis-py cannot encode
        "ResponseError": "other",  # refined by its message below
    },
    "paho": {"WebsocketConnectionError": "unavailable", "MalformedPacket": "serialization"},
    # confluent-kafka's classes live in its C module, `cimpl`
    "cimpl": {"KafkaException": "other", "KafkaError": "other",  # refined by the code
              "SerializationError": "serialization", "ConsumeError": "other"},
    "confluent_kafka": {"SerializationError": "serialization",
                        "KeySerializationError": "serialization",
                        "ValueSerializationError": "serialization",
                        "KeyDeserializationError": "serialization",
                        "ValueDeserializationError": "serialization"},
    "httpx": {
        "TimeoutException": "timeout",
        "ConnectError": "unavailable", "NetworkError": "unavailable",
        "RemoteProtocolError": "unavailable", "ProxyError": "unavailable",
        "DecodingError": "serialization",
        "HTTPStatusError": "other",  # refined by its status below
    },
    "httpcore": {"TimeoutException": "timeout", "ConnectError": "unavailable",
                 "NetworkError": "unavailable", "RemoteProtocolError": "unavailable"},
}  # fmt: skip

# confluent-kafka's error codes (KafkaError.name()); the others are `other`.
KAFKA_CODES: dict[str, str] = {
    "_AUTHENTICATION": "auth", "SASL_AUTHENTICATION_FAILED": "auth",
    "TOPIC_AUTHORIZATION_FAILED": "auth", "GROUP_AUTHORIZATION_FAILED": "auth",
    "CLUSTER_AUTHORIZATION_FAILED": "auth", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED": "auth",
    "_SSL": "auth",
    "_MSG_TIMED_OUT": "timeout", "_TIMED_OUT": "timeout", "REQUEST_TIMED_OUT": "timeout",
    "_TIMED_OUT_QUEUE": "timeout",
    "_QUEUE_FULL": "throttled", "THROTTLING_QUOTA_EXCEEDED": "throttled",
    "_TRANSPORT": "unavailable", "_ALL_BROKERS_DOWN": "unavailable",
    "_DESTROY": "unavailable", "LEADER_NOT_AVAILABLE": "unavailable",
    "NOT_LEADER_FOR_PARTITION": "unavailable", "BROKER_NOT_AVAILABLE": "unavailable",
    "NOT_ENOUGH_REPLICAS": "unavailable", "NOT_ENOUGH_REPLICAS_AFTER_APPEND": "unavailable",
    "COORDINATOR_NOT_AVAILABLE": "unavailable", "NOT_COORDINATOR": "unavailable",
    "_UNKNOWN_TOPIC": "unavailable", "UNKNOWN_TOPIC_OR_PART": "unavailable",
    "_UNKNOWN_PARTITION": "unavailable",
    "_KEY_SERIALIZATION": "serialization", "_VALUE_SERIALIZATION": "serialization",
    "_KEY_DESERIALIZATION": "serialization", "_VALUE_DESERIALIZATION": "serialization",
    "CORRUPT_MESSAGE": "serialization", "INVALID_RECORD": "serialization",
}  # fmt: skip

# Error replies redis-py raises as a plain ResponseError, by their first word.
REDIS_REPLIES = {"NOAUTH": "auth", "WRONGPASS": "auth", "NOPERM": "auth", "OOM": "throttled",
                 "BUSY": "unavailable", "LOADING": "unavailable", "MASTERDOWN": "unavailable",
                 "READONLY": "unavailable", "TRYAGAIN": "unavailable",
                 "CLUSTERDOWN": "unavailable"}  # fmt: skip
# A NATS server's -ERR, which nats-py raises on connect as a plain `Error`
# ("nats: 'Authorization Violation'"), by words in it (lower case).
NATS_REPLIES = {"authorization violation": "auth", "authentication expired": "auth",
                "authentication revoked": "auth", "permissions violation": "auth",
                "maximum connections exceeded": "throttled",
                "maximum account active connections exceeded": "throttled"}  # fmt: skip
# AMQP reply codes of a channel or connection the broker closed.
AMQP_REPLIES = {403: "auth", 530: "auth", 404: "unavailable", 320: "unavailable",
                406: "other", 506: "throttled"}  # fmt: skip


# paho-mqtt's result codes (MQTTErrorCode names, and their numbers in paho 1).
MQTT_CODES = {"MQTT_ERR_AUTH": "auth", "MQTT_ERR_ACL_DENIED": "auth", "MQTT_ERR_TLS": "auth",
              "MQTT_ERR_NO_CONN": "unavailable", "MQTT_ERR_CONN_LOST": "unavailable",
              "MQTT_ERR_CONN_REFUSED": "unavailable", "MQTT_ERR_QUEUE_SIZE": "throttled",
              "MQTT_ERR_KEEPALIVE": "timeout"}  # fmt: skip
MQTT_NUMBERS = {11: "MQTT_ERR_AUTH", 12: "MQTT_ERR_ACL_DENIED", 8: "MQTT_ERR_TLS",
                4: "MQTT_ERR_NO_CONN", 7: "MQTT_ERR_CONN_LOST", 5: "MQTT_ERR_CONN_REFUSED",
                15: "MQTT_ERR_QUEUE_SIZE", 16: "MQTT_ERR_KEEPALIVE"}  # fmt: skip


# MQTT v5 reason codes of a PUBACK / PUBREC that refused a publish; the others are `other`.
MQTT_REASONS = {0x87: "auth", 0x97: "throttled", 0x99: "serialization"}  # fmt: skip


def mqtt_reason_class(reason: object) -> str:
    """The class of an MQTT v5 reason code that refused a publish (paho's ReasonCode)."""
    value = getattr(reason, "value", reason)
    return MQTT_REASONS.get(value, "other") if isinstance(value, int) else "other"


def mqtt_rc_class(rc: object) -> str:
    """The class of a paho-mqtt publish result code that is not success."""
    name = getattr(rc, "name", None)
    if not isinstance(name, str) and isinstance(rc, int):
        name = MQTT_NUMBERS.get(rc)
    return MQTT_CODES.get(name, "other") if isinstance(name, str) else "other"


def http_status_class(status: int) -> str:
    """The class of an HTTP answer that is not a success (a webhook's)."""
    if status in (401, 403, 407):
        return "auth"
    if status in (408, 504):
        return "timeout"
    if status == 429:
        return "throttled"
    if status in (502, 503):
        return "unavailable"
    if status in (400, 415, 422):  # the receiver could not read or validate the body
        return "serialization"
    return "other"


def kafka_error_class(error: object) -> str:
    """The class of a confluent-kafka `KafkaError` (a delivery report's), by its code."""
    name = getattr(error, "name", None)
    try:
        code = name() if callable(name) else None
    except Exception:  # never raise into the host
        return "other"
    return KAFKA_CODES.get(code, "other") if isinstance(code, str) else "other"


def _refine(package: str, name: str, exc: BaseException, found: str) -> str:
    """The classes whose instance says more than its class: a code, a status."""
    if package == "cimpl" and name in ("KafkaException", "KafkaError"):
        return kafka_error_class(exc.args[0] if exc.args else exc)
    if package == "httpx" and name == "HTTPStatusError":
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return http_status_class(status) if isinstance(status, int) else found
    if package == "redis" and name == "ResponseError":
        words = str(exc).split(maxsplit=1)
        return REDIS_REPLIES.get(words[0], found) if words else found
    if package == "pika" and name.endswith("ClosedByBroker"):
        code = getattr(exc, "reply_code", None)
        return AMQP_REPLIES.get(code, found) if isinstance(code, int) else found
    if package == "nats" and name == "Error":
        text = str(exc).lower()
        return next((c for words, c in NATS_REPLIES.items() if words in text), found)
    if package == "nats" and name == "APIError":
        code = getattr(exc, "code", None)
        return http_status_class(code) if isinstance(code, int) and code >= 400 else found
    return found


def _of_class(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:
        package = str(getattr(cls, "__module__", "")).partition(".")[0]
        found = LIBRARIES.get(package, {}).get(cls.__name__)
        if found is not None:
            return _refine(package, cls.__name__, exc, found)
    return None


def classify(exc: BaseException) -> str:
    """The error class of an exception: its own classes, else its causes' (`raise
    ... from`: a library wrapping another's error), else `other`."""
    seen = 0
    at: BaseException | None = exc
    while at is not None and seen < 8:  # a cause chain is short; a cycle is not followed far
        found = _of_class(at)
        if found is not None and found != "other":
            return found
        at = at.__cause__
        seen += 1
    return "other"


# The tables in docs/adapters.md, one per client library (its packages), in this order.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Python's own (any adapter; a handler's own exceptions)",
     ("builtins", "asyncio", "concurrent")),
    ("A handler's decoding (json, msgspec)", ("json", "msgspec")),
    ("RabbitMQ (pika)", ("pika",)),
    ("NATS (nats-py)", ("nats",)),
    ("Redis Streams (redis-py)", ("redis",)),
    ("MQTT (paho-mqtt)", ("paho",)),
    ("Kafka (confluent-kafka)", ("cimpl", "confluent_kafka")),
    ("Webhooks (httpx)", ("httpx", "httpcore")),
)  # fmt: skip


def _codes(package: str) -> dict[str, list[str]]:
    """What an instance says beyond its class (_refine), by class, as the doc shows it."""
    out: dict[str, list[str]] = {}

    def add(table: dict[Any, str], shown: str) -> None:
        for code, error_class in table.items():
            out.setdefault(error_class, []).append(shown.format(code))

    if package == "pika":
        add(AMQP_REPLIES, "reply code {}")
    elif package == "nats":
        add(_statuses(), "API error {}")
        add(NATS_REPLIES, "server error '{}' (an `Error` on connect)")
    elif package == "redis":
        add(REDIS_REPLIES, "reply `{}`")
    elif package == "paho":
        add(MQTT_CODES, "result `{}`")
        add({f"0x{k:02X}": c for k, c in MQTT_REASONS.items()}, "PUBACK reason {}")
    elif package == "cimpl":
        add(KAFKA_CODES, "`{}`")
    elif package == "httpx":
        add(_statuses(), "status {}")
    return out


def _statuses() -> dict[int, str]:
    """The HTTP statuses http_status_class does not call `other`."""
    return {s: c for s in range(400, 600) if (c := http_status_class(s)) != "other"}


def markdown() -> str:
    """The tables above in Markdown (docs/adapters.md holds them: tests/test_adapters_doc.py):
    per library, each error class with the exception classes and the codes that give it."""
    parts = []
    for title, packages in SECTIONS:
        rows = [f"#### {title}", "", "| class | exceptions | codes |", "|---|---|---|"]
        codes: dict[str, list[str]] = {}
        for package in packages:
            for error_class, shown in _codes(package).items():
                codes.setdefault(error_class, []).extend(shown)
        for error_class in ERROR_CLASSES:
            names = [
                f"`{n}`" if p == "builtins" else f"`{p}.{n}`"
                for p in packages
                for n, c in LIBRARIES[p].items()
                if c == error_class
            ]
            shown = codes.get(error_class, [])
            if names or shown:
                rows.append(f"| `{error_class}` | {', '.join(names) or '-'} | "
                            f"{', '.join(shown) or '-'} |")  # fmt: skip
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"
