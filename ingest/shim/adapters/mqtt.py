"""MQTT adapter for paho-mqtt 2.x: acknowledged publishes, tallied subscribers.

In the adapters' common dialect (`msgtally.ingest.shim.adapters.common`):

- `Publisher(client, tally, *, qos=1, stream=None, envelope=None,
  timeout=10.0)`; `.publish(topic, body, *, message_id=None, qos=None,
  retain=False, properties=None, stream=None, attempt=1, timeout=None) ->
  Published` publishes with the message id and W3C trace context, waits for
  the broker's acknowledgment and reports the produce. `Published` has
  `message_id`, `info` (paho's `MQTTMessageInfo`) and `confirmed`.
- `tallied(tally, group, handler, *, stream=None, acks="after",
  max_attempts=None, dead_letter_topic=None) -> MqttConsumer`: an
  `on_message` callback (`client.on_message = ...` or
  `message_callback_add`; the `common.Consumer` contract) that calls
  `handler(received)` inside `tally.processing` and then acknowledges per
  the policy below.
- `Received`: the common one (`body` is the payload without the envelope)
  with paho's `client` and `message`, and the `topic`.
- `wrap(headers, body)`, `unwrap(payload)`, `headers_of(message)`,
  `message_id_of(message)`, `attempt_of(message)`.

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("broker", 1883)
    client.loop_start()                                 # acks need the loop
    tally = Tally(collector_url="http://collector:8410", system="mqtt")
    Publisher(client, tally).publish("orders/eu", b"{...}")

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                      client_id="billing-1", manual_ack=True)
    sub.on_message = tallied(tally, "billing", lambda msg: bill(msg.body))
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 3600                # persistent session
    sub.connect("broker", 1883, clean_start=False, properties=session)
    sub.subscribe("orders/#", qos=1)
    sub.loop_forever()

Where the id and trace context travel:
- MQTT v5 clients: PUBLISH user properties `msgtally-message-id`,
  `traceparent` (and `tracestate`). The payload is untouched.
- MQTT 3.1/3.1.1 clients have no headers. By default (`envelope=None` means
  on for v3 clients; v5 clients never use it) the payload is wrapped in a
  small envelope:
  `b"\\x00msgtally\\x01"`, a 2-byte big-endian length n, n bytes of a UTF-8
  JSON object of the string headers, then the original payload. Subscribers
  must use `tallied` (or `unwrap`) to get the original payload back; the
  consumer side unwraps whatever the protocol version.
- No carrier (`envelope=False` on a v3 client, or a producer without
  msgtally): the id is `common.body_digest(payload)`, `sha256:` and 32 hex
  digits of the payload's SHA-256, which the publisher reports too (a `message_id`
  argument cannot travel then and is ignored). The packet identifier (paho's
  `mid`) is not used: it is per connection and per direction (the
  publisher's and each subscriber's differ), recycled after 65535 and reused
  for the DUP resend only, so it cannot be joined with a produce record. The
  digest is stable across redeliveries and subscribers; identical payloads
  share an id, so use it only for payloads that are unique.

Produce outcome: QoS 1 and 2: `ok` when the broker acknowledged (PUBACK /
PUBCOMP) within `timeout`; `error` (indeterminate) when it did not, when an
MQTT v5 broker refused it in that acknowledgment (a reason code from 0x80, e.g.
0x87 not authorized by an ACL; heard through `on_publish`, which the publisher
chains: set your own `on_publish` before making the `Publisher`), when the
client was disconnected (paho may still send a queued QoS > 0 message after
reconnecting: it then shows up as `recovered`), or when `publish` raised (the
exception propagates). QoS 0 has no acknowledgment: `ok` means the client
wrote it to its socket. `publish` blocks until then, so it needs the
network loop running in another thread (`loop_start`), and must not be
called from a paho callback (it would wait the full timeout).

Stream: `stream=` of the call, else the publisher's / consumer's `stream`,
else `tally.stream`, else the topic.

Attempt: 2 when the DUP flag is set (the broker resends an unacknowledged
QoS 1/2 message on session resumption), else 1. MQTT has no delivery count.

Ack policy (`acks="after"`, the default): with a `manual_ack=True` client,
the adapter sends the PUBACK/PUBCOMP after the handler returns or
dead-letters, and leaves the message unacknowledged when the handler raised
or called `failed()` (MQTT has no nack: the broker resends it, with DUP,
when the persistent session reconnects). With paho's default automatic
acks, paho acknowledges after the callback whatever happened (the adapter's
`client.ack` does nothing then): a failed message is not redelivered and is
counted lost. MQTT has no dead-letter queue: `dead_letter()` (or a failure
on attempt `max_attempts` or later) is reported `dead_letter` and the
message acknowledged; with `dead_letter_topic`, the message (payload and
carrier as received) is first republished there at QoS 1. The handler's
exception is logged and not re-raised, so it does not stop paho's network
loop. `acks="before"`: acknowledged before the handler runs (at most once).
`acks="manual"`: report only, the caller acks (`client.ack(mid, qos)`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from msgtally.ingest.shim.adapters import common
from msgtally.ingest.shim.adapters.common import Acks, Handler, RetryPolicy, Step, Tallied
from msgtally.ingest.shim.classify import mqtt_rc_class, mqtt_reason_class
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally

__all__ = [
    "ENVELOPE_MAGIC",
    "MqttConsumer",
    "Published",
    "Publisher",
    "Received",
    "attempt_of",
    "headers_of",
    "message_id_of",
    "tallied",
    "unwrap",
    "wrap",
]

log = logging.getLogger(__name__)

ENVELOPE_MAGIC = b"\x00msgtally\x01"
_HEADER_LIMIT = 0xFFFF


def wrap(headers: Mapping[str, str], body: bytes) -> bytes:
    """The v3.1.1 envelope: magic, 2-byte header length, JSON headers, body."""
    meta = json.dumps(dict(headers), separators=(",", ":")).encode("utf-8")
    if len(meta) > _HEADER_LIMIT:
        meta = json.dumps({k: v for k, v in headers.items() if k == MESSAGE_ID_HEADER}).encode()
    return ENVELOPE_MAGIC + len(meta).to_bytes(2, "big") + meta + body


def unwrap(payload: bytes | bytearray) -> tuple[dict[str, str], bytes]:
    """Headers and original payload of an enveloped payload; ({}, payload) if none."""
    payload = bytes(payload)
    if not payload.startswith(ENVELOPE_MAGIC):
        return {}, payload
    start = len(ENVELOPE_MAGIC) + 2
    n = int.from_bytes(payload[len(ENVELOPE_MAGIC) : start], "big")
    if len(payload) < start + n:
        return {}, payload
    try:
        raw = json.loads(payload[start : start + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}, payload
    if not isinstance(raw, dict):
        return {}, payload
    headers = {str(k): v for k, v in raw.items() if isinstance(v, str)}
    return headers, payload[start + n :]


def _as_bytes(payload: bytes | bytearray | str | None) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


@dataclass(frozen=True)
class Published:
    message_id: str
    info: mqtt.MQTTMessageInfo
    confirmed: bool


class Publisher:
    """Publishes with the message id and trace context, reports the broker's ack."""

    def __init__(
        self,
        client: mqtt.Client,
        tally: Tally,
        *,
        qos: int = 1,
        stream: str | None = None,
        envelope: bool | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.tally = tally
        self.qos = qos
        self.stream = stream
        self.v5 = client.protocol == mqtt.MQTTv5
        self.envelope = (not self.v5) if envelope is None else (envelope and not self.v5)
        self.timeout = timeout
        # An MQTT v5 broker refuses a publish in its PUBACK / PUBREC (0x87 not
        # authorized: an ACL; 0x97 quota exceeded) and paho still marks it
        # published: only `on_publish` hears the reason code. Chained, not replaced.
        self._refused: dict[int, object] = {}
        if self.v5 and client.callback_api_version == CallbackAPIVersion.VERSION2:
            previous: Any = client.on_publish  # a VERSION2 callback: five arguments

            def on_publish(c: mqtt.Client, userdata: Any, mid: int, reason: Any,
                           props: Any) -> None:  # fmt: skip
                if getattr(reason, "is_failure", False):
                    self._refused[mid] = reason
                if previous is not None:
                    previous(c, userdata, mid, reason, props)

            client.on_publish = on_publish

    def publish(
        self,
        topic: str,
        body: bytes | bytearray | str | None,
        *,
        message_id: str | None = None,
        qos: int | None = None,
        retain: bool = False,
        properties: Properties | None = None,
        stream: str | None = None,
        attempt: int = 1,
        timeout: float | None = None,
    ) -> Published:
        """Publish, wait for the broker's acknowledgment, report the produce."""
        data = _as_bytes(body)
        carrier = self.v5 or self.envelope
        if carrier:
            mid = message_id or common.new_message_id()
        else:
            if message_id:
                log.warning("msgtally: no header carrier on MQTT 3.1.1 without the envelope")
            mid = common.body_digest(data)
        s = common.stream_for(self.tally, topic, stream, self.stream)
        q = self.qos if qos is None else qos
        with self.tally.sending(mid, stream=s, attempt=attempt) as sending:
            props = properties
            if self.v5:
                props = copy.deepcopy(properties) if properties is not None else None
                if props is None:
                    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = list(sending.headers.items())
            elif self.envelope:
                data = wrap(sending.headers, data)
            info = self.client.publish(topic, data, q, retain, props)
            failure = _failure(info, self.timeout if timeout is None else timeout)
            refused = self._refused.pop(info.mid, None)
            if failure is None and refused is not None:
                failure = mqtt_reason_class(refused)
            if failure is not None:
                sending.failed(failure)
        return Published(mid, info, failure is None)


def _failure(info: mqtt.MQTTMessageInfo, timeout: float) -> str | None:
    """None once the broker acknowledged (QoS 0: written), else the error class."""
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        return mqtt_rc_class(info.rc)
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):  # paho: the client is not connected, or no queue
        return mqtt_rc_class(info.rc) if info.rc != mqtt.MQTT_ERR_SUCCESS else "unavailable"
    return None if info.is_published() else "timeout"


def _user_properties(message: mqtt.MQTTMessage) -> dict[str, str]:
    props = getattr(message, "properties", None)
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    out: dict[str, str] = {}
    if isinstance(pairs, list):
        for pair in pairs:
            if isinstance(pair, tuple) and len(pair) == 2:
                out[str(pair[0])] = str(pair[1])
    return out


def _carrier(message: mqtt.MQTTMessage) -> tuple[dict[str, str], bytes]:
    """Headers (v5 user properties, else the envelope's) and the original payload."""
    enveloped, payload = unwrap(message.payload)
    headers = _user_properties(message)
    if MESSAGE_ID_HEADER not in headers:
        headers.update(enveloped)
    return headers, payload


def headers_of(message: mqtt.MQTTMessage) -> dict[str, str]:
    """Carrier headers: v5 user properties, else the envelope's."""
    return _carrier(message)[0]


def message_id_of(message: mqtt.MQTTMessage) -> str:
    """The carried id, else `common.body_digest` of the (unwrapped) payload."""
    headers, body = _carrier(message)
    return headers.get(MESSAGE_ID_HEADER) or common.body_digest(body)


def attempt_of(message: mqtt.MQTTMessage) -> int:
    """2 for a DUP resend, else 1."""
    return 2 if message.dup else 1


@dataclass(kw_only=True, eq=False)
class Received(common.Received[bytes]):
    """One delivery, as the handler sees it: `body` is the payload without the
    envelope; paho's `client` and `message`, and the `topic`."""

    client: mqtt.Client
    message: mqtt.MQTTMessage
    topic: str


class MqttConsumer(Tallied[Received]):
    """An `on_message` callback; see the module docstring for the ack policy."""

    dead_letter_topic: str | None = None

    def __call__(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> Received:
        headers, body = _carrier(message)
        return self.consume(
            Received(
                client=client,
                message=message,
                topic=message.topic,
                body=body,
                message_id=headers.get(MESSAGE_ID_HEADER) or common.body_digest(body),
                attempt=attempt_of(message),
                stream=common.stream_for(self.tally, message.topic, self.stream),
                headers=headers,
            )
        )

    def settle(self, received: Received, step: Step) -> None:
        if step == "retry":
            return  # MQTT has no nack: unacknowledged, resent on session resumption
        message, client = received.message, received.client
        if step == "dead_letter" and self.dead_letter_topic is not None:
            props = None
            user = _user_properties(message)
            if client.protocol == mqtt.MQTTv5 and user:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = list(user.items())
            # Not waited for: this runs in paho's network thread.
            client.publish(self.dead_letter_topic, message.payload, qos=1, properties=props)
        client.ack(message.mid, message.qos)  # does nothing unless manual_ack=True


def tallied(
    tally: Tally,
    group: str,
    handler: Handler[Received],
    *,
    stream: str | None = None,
    acks: Acks = "after",
    max_attempts: int | None = None,
    dead_letter_topic: str | None = None,
    retry: RetryPolicy | None = None,
) -> MqttConsumer:
    """An `on_message` callback that reports every delivery and acknowledges it.
    `retry` is announced (its dead-letter target `dead_letter_topic` unless given)."""
    if dead_letter_topic is not None and (retry is None or retry.dead_letter is None):
        retry = replace(retry or RetryPolicy(), dead_letter=dead_letter_topic)
    consumer = MqttConsumer(tally, group, handler, stream, acks, max_attempts, retry)
    consumer.dead_letter_topic = dead_letter_topic
    return consumer


if TYPE_CHECKING:

    def _keeps_the_contract(
        consumer: MqttConsumer,
    ) -> common.Consumer[[mqtt.Client, Any, mqtt.MQTTMessage], Received]:
        return consumer  # mypy checks that the consumer keeps the common contract
