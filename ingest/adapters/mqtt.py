"""MQTT adapter for paho-mqtt 2.x: acknowledged publishes, tallied subscribers.

Public API:

- `MqttPublisher(client, tally, *, qos=1, stream=None, envelope=None,
  timeout=10.0)`; `.publish(topic, payload, *, message_id=None, qos=None,
  retain=False, properties=None, stream=None, attempt=1, timeout=None) ->
  Published` publishes with the message id and W3C trace context, waits for
  the broker's acknowledgment and reports the produce. `Published` has
  `message_id`, `info` (paho's `MQTTMessageInfo`) and `confirmed`.
- `tallied(tally, group, handler, *, stream=None, ack=True,
  dead_letter_topic=None)`: an `on_message` callback (`client.on_message =
  ...` or `message_callback_add`) that calls `handler(received)` inside
  `tally.processing` and then acknowledges per the policy below.
- `Received`: what the handler gets (`client`, `message`, `topic`,
  `payload` without the envelope, `message_id`, `attempt`, `stream`,
  `headers`) and `.dead_letter()` / `.failed()`.
- `wrap(headers, payload)`, `unwrap(payload)`, `payload_id(payload)`,
  `headers_of(message)`, `message_id_of(message)`, `attempt_of(message)`.

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("broker", 1883)
    client.loop_start()                                 # acks need the loop
    tally = Tally(collector_url="http://collector:8410", system="mqtt")
    MqttPublisher(client, tally).publish("orders/eu", b"{...}")

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                      client_id="billing-1", manual_ack=True)
    sub.on_message = tallied(tally, "billing", lambda msg: bill(msg.payload))
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
  msgtally): the id is `payload_id(payload)`, `sha256:` and 32 hex digits of
  the payload's SHA-256, which the publisher reports too (a `message_id`
  argument cannot travel then and is ignored). The packet identifier (paho's
  `mid`) is not used: it is per connection and per direction (the
  publisher's and each subscriber's differ), recycled after 65535 and reused
  for the DUP resend only, so it cannot be joined with a produce record. The
  digest is stable across redeliveries and subscribers; identical payloads
  share an id, so use it only for payloads that are unique.

Produce outcome: QoS 1 and 2: `ok` when the broker acknowledged (PUBACK /
PUBCOMP) within `timeout`; `error` (indeterminate) when it did not, when the
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

Ack policy (`ack=True`): with a `manual_ack=True` client, the adapter sends
the PUBACK/PUBCOMP after the handler returns or dead-letters, and leaves the
message unacknowledged when the handler raised or called `failed()` (MQTT
has no nack: the broker resends it, with DUP, when the persistent session
reconnects). With paho's default automatic acks, paho acknowledges after
the callback whatever happened: a failed message is not redelivered and is
counted lost. MQTT has no dead-letter queue: `dead_letter()` is reported
`dead_letter` and the message acknowledged; with `dead_letter_topic`, the
message (payload and carrier as received) is first republished there at QoS
1. The handler's exception is logged (logger `msgtally.mqtt`) and not
re-raised, so it does not stop paho's network loop. `ack=False`: report
only, the caller acks (`client.ack(mid, qos)`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..sdk import MESSAGE_ID_HEADER, Delivery, Tally

__all__ = [
    "ENVELOPE_MAGIC",
    "MqttPublisher",
    "Published",
    "Received",
    "attempt_of",
    "headers_of",
    "message_id_of",
    "payload_id",
    "tallied",
    "unwrap",
    "wrap",
]

log = logging.getLogger("msgtally.mqtt")

ENVELOPE_MAGIC = b"\x00msgtally\x01"
_HEADER_LIMIT = 0xFFFF


def wrap(headers: Mapping[str, str], payload: bytes) -> bytes:
    """The v3.1.1 envelope: magic, 2-byte header length, JSON headers, payload."""
    meta = json.dumps(dict(headers), separators=(",", ":")).encode("utf-8")
    if len(meta) > _HEADER_LIMIT:
        meta = json.dumps({k: v for k, v in headers.items() if k == MESSAGE_ID_HEADER}).encode()
    return ENVELOPE_MAGIC + len(meta).to_bytes(2, "big") + meta + payload


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


def payload_id(payload: bytes) -> str:
    """The id when no carrier is available: a digest of the (original) payload."""
    return "sha256:" + hashlib.sha256(payload).hexdigest()[:32]


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


class _Unconfirmed(Exception):
    """The broker did not acknowledge in time: the produce is indeterminate."""


class MqttPublisher:
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

    def publish(
        self,
        topic: str,
        payload: bytes | bytearray | str | None,
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
        body = _as_bytes(payload)
        carrier = self.v5 or self.envelope
        if carrier:
            mid = message_id or uuid.uuid4().hex
        else:
            if message_id:
                log.warning("msgtally: no header carrier on MQTT 3.1.1 without the envelope")
            mid = payload_id(body)
        s = stream or self.stream or self.tally.stream or topic
        q = self.qos if qos is None else qos
        info: mqtt.MQTTMessageInfo | None = None
        confirmed = False
        try:
            with self.tally.sending(mid, stream=s, attempt=attempt) as headers:
                props = properties
                if self.v5:
                    props = copy.deepcopy(properties) if properties is not None else None
                    if props is None:
                        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    props.UserProperty = list(headers.items())
                elif self.envelope:
                    body = wrap(headers, body)
                info = self.client.publish(topic, body, q, retain, props)
                confirmed = _confirmed(info, self.timeout if timeout is None else timeout)
                if not confirmed:
                    raise _Unconfirmed  # reported `error`, caught below
        except _Unconfirmed:
            pass
        assert info is not None
        return Published(mid, info, confirmed)


def _confirmed(info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        return False
    try:
        info.wait_for_publish(timeout)
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


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
    """The carried id, else `payload_id` of the (unwrapped) payload."""
    headers, payload = _carrier(message)
    return headers.get(MESSAGE_ID_HEADER) or payload_id(payload)


def attempt_of(message: mqtt.MQTTMessage) -> int:
    """2 for a DUP resend, else 1."""
    return 2 if message.dup else 1


@dataclass
class Received:
    """One delivery, as the handler sees it."""

    client: mqtt.Client
    message: mqtt.MQTTMessage
    topic: str
    payload: bytes
    message_id: str
    attempt: int
    stream: str
    headers: dict[str, str]
    delivery: Delivery = field(default_factory=Delivery)

    def dead_letter(self) -> None:
        """Give up on it: acked (and republished to the dead-letter topic, if any)."""
        self.delivery.dead_letter()

    def failed(self) -> None:
        """Processing failed without an exception: left unacknowledged."""
        self.delivery.failed()


Handler = Callable[[Received], object]
OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


def tallied(
    tally: Tally,
    group: str,
    handler: Handler,
    *,
    stream: str | None = None,
    ack: bool = True,
    dead_letter_topic: str | None = None,
) -> OnMessage:
    """An `on_message` callback that reports every delivery and acknowledges it."""

    def on_message(client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        headers, payload = _carrier(message)
        mid = headers.get(MESSAGE_ID_HEADER) or payload_id(payload)
        received = Received(
            client=client,
            message=message,
            topic=message.topic,
            payload=payload,
            message_id=mid,
            attempt=attempt_of(message),
            stream=stream or tally.stream or message.topic,
            headers=headers,
        )
        try:
            with tally.processing(
                mid,
                group=group,
                stream=received.stream,
                attempt=received.attempt,
                headers=headers,
            ) as delivery:
                received.delivery = delivery
                handler(received)
        except Exception:
            log.exception("msgtally: handler failed, message %s", mid)
        outcome = received.delivery.outcome
        if outcome == "dead_letter" and dead_letter_topic is not None:
            props = None
            user = _user_properties(message)
            if client.protocol == mqtt.MQTTv5 and user:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = list(user.items())
            # Not waited for: this runs in paho's network thread.
            client.publish(dead_letter_topic, message.payload, qos=1, properties=props)
        if ack and outcome != "error" and message.qos > 0 and getattr(client, "_manual_ack", False):
            client.ack(message.mid, message.qos)

    return on_message
