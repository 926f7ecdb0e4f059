"""RabbitMQ adapter for pika's BlockingConnection: confirmed publishes, tallied consumers.

Public API:

- `RabbitPublisher(channel, tally, *, exchange="", stream=None)`: turns on
  publisher confirms on `channel`; `.publish(routing_key, body, *,
  message_id=None, properties=None, exchange=None, mandatory=False,
  stream=None, attempt=1) -> str` publishes with the `msgtally-message-id`,
  `traceparent` (and `tracestate`) headers, sets the AMQP `message_id`
  property when unset, and returns the message id (uuid4 hex unless given or
  already in `properties.message_id`).
- `tallied(tally, group, handler, *, stream=None, acks=True, max_attempts=None)`:
  an `on_message_callback` for `channel.basic_consume`; calls
  `handler(received)` inside `tally.processing`, then settles the message.
- `Received`: what the handler gets (`channel`, `method`, `properties`,
  `body`, `message_id`, `attempt`, `stream`, `headers`) and
  `.dead_letter()` / `.failed()`.
- `message_id_of(properties, body)`, `attempt_of(method, properties)`,
  `headers_of(properties)`, `body_id(body)`: the consumer-side readings on
  their own (`body_id` also lets a producer without the adapter report the
  id a consumer will fall back to).

    tally = Tally(collector_url="http://collector:8410", system="rabbitmq")
    publisher = RabbitPublisher(channel, tally)
    publisher.publish("orders", b"{...}")            # stream = routing key

    def handle(msg: Received) -> None:
        if not valid(msg.body):
            msg.dead_letter()                        # -> the queue's DLX
            return
        bill(msg.body)                               # raises -> nack, requeue

    channel.basic_qos(prefetch_count=50)
    channel.basic_consume("orders", tallied(tally, "billing", handle))
    channel.start_consuming()

Produce outcome: `ok` when the broker confirmed the publish (Basic.Ack in
confirm mode); `error` (indeterminate) when `basic_publish` raised: a nack
(`NackError`), an unroutable `mandatory` publish (`UnroutableError`), a
closed channel or connection. The exception propagates to the caller. A
non-mandatory publish that no queue binds is confirmed by RabbitMQ and then
shows up as lost, which is what happened to it.

Stream: `stream=` of the call, else the publisher's / consumer's `stream`,
else `tally.stream`, else the routing key (the queue name on the default
exchange). Pass `stream=` when an exchange routes several keys to one queue.

Message id on the consumer: the `msgtally-message-id` header, else the AMQP
`message_id` property (producers that do not use msgtally), else
`sha256:` and the first 32 hex digits of the SHA-256 of the body (stable
across redeliveries; identical bodies share an id, so only unique bodies
are counted right).

Attempt: `x-delivery-count` + 1 when the header is there (quorum queues:
absent on a first delivery to a consumer, 0 on a first `basic_get` on
RabbitMQ 3.10, incremented by every requeue and every return from a closed
channel), and at least 2 when the `redelivered` flag is set (classic queues
only have the flag).

Ack policy (`acks=True`, for `auto_ack=False` consumers): after the handler
returns, `basic_ack`; after `received.dead_letter()`, `basic_reject(requeue=
False)` so the broker routes the message through the queue's
`x-dead-letter-exchange` (reported `dead_letter`); after an exception or
`received.failed()`, `basic_nack(requeue=True)` (reported `error`: the broker
redelivers it with a higher attempt). With `max_attempts`, a failure on that
attempt or later is rejected without requeue and reported `dead_letter`
instead. The handler's exception is logged (logger `msgtally.rabbitmq`) and
not re-raised, so one bad message does not stop `start_consuming`. The
consume record is emitted before the ack: a crash between the two is
a redelivery, counted as a duplicate, which it is. `acks=False`: the adapter
only reports; use it with `auto_ack=True` consumers or when the caller acks
itself (batched `multiple=True` acks).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from ..sdk import MESSAGE_ID_HEADER, Delivery, Tally

__all__ = [
    "RabbitPublisher",
    "Received",
    "attempt_of",
    "body_id",
    "headers_of",
    "message_id_of",
    "tallied",
]

log = logging.getLogger("msgtally.rabbitmq")

DELIVERY_COUNT_HEADER = "x-delivery-count"


class RabbitPublisher:
    """Publishes with the message id and trace context, reports the confirm."""

    def __init__(
        self,
        channel: BlockingChannel,
        tally: Tally,
        *,
        exchange: str = "",
        stream: str | None = None,
    ) -> None:
        self.channel = channel
        self.tally = tally
        self.exchange = exchange
        self.stream = stream
        # pika logs an error when confirms are turned on twice: check first.
        if not getattr(channel, "_delivery_confirmation", False):
            channel.confirm_delivery()

    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        properties: pika.BasicProperties | None = None,
        exchange: str | None = None,
        mandatory: bool = False,
        stream: str | None = None,
        attempt: int = 1,
    ) -> str:
        """Publish and wait for the broker's confirm; returns the message id.

        Raises what `basic_publish` raises (after reporting the produce as
        `error`); `properties` is copied, not modified.
        """
        props = copy.copy(properties) if properties is not None else pika.BasicProperties()
        mid = message_id or props.message_id or uuid.uuid4().hex
        s = stream or self.stream or self.tally.stream or routing_key
        with self.tally.sending(mid, stream=s, attempt=attempt) as headers:
            props.headers = {**(props.headers or {}), **headers}
            if not props.message_id:
                props.message_id = mid
            self.channel.basic_publish(
                self.exchange if exchange is None else exchange,
                routing_key,
                body,
                props,
                mandatory,
            )
        return str(mid)


def headers_of(properties: pika.BasicProperties) -> dict[str, str]:
    """The message's string headers (bytes decoded as UTF-8), others left out."""
    out: dict[str, str] = {}
    raw = getattr(properties, "headers", None)
    if not isinstance(raw, Mapping):
        return out
    for key, value in raw.items():
        if isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, bytes):
            try:
                out[str(key)] = value.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


def body_id(body: bytes) -> str:
    """The last-resort message id: a digest of the body."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:32]


def message_id_of(properties: pika.BasicProperties, body: bytes) -> str:
    """msgtally header, else the AMQP message_id property, else a body digest."""
    mid = headers_of(properties).get(MESSAGE_ID_HEADER)
    if mid:
        return mid
    prop = getattr(properties, "message_id", None)
    if isinstance(prop, str) and prop:
        return prop
    return body_id(body)


def attempt_of(method: Any, properties: pika.BasicProperties) -> int:
    """Delivery attempt from `x-delivery-count` and the `redelivered` flag."""
    attempt = 2 if getattr(method, "redelivered", False) else 1
    raw = getattr(properties, "headers", None)
    count = raw.get(DELIVERY_COUNT_HEADER) if isinstance(raw, Mapping) else None
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        attempt = max(attempt, count + 1)
    return attempt


@dataclass
class Received:
    """One delivery, as the handler sees it."""

    channel: BlockingChannel
    method: Any
    properties: pika.BasicProperties
    body: bytes
    message_id: str
    attempt: int
    stream: str
    headers: dict[str, str]
    delivery: Delivery = field(default_factory=Delivery)

    def dead_letter(self) -> None:
        """Reject without requeue: the broker dead-letters it (the queue's DLX)."""
        self.delivery.dead_letter()

    def failed(self) -> None:
        """Processing failed without an exception: nack and requeue."""
        self.delivery.failed()


Handler = Callable[[Received], object]
OnMessage = Callable[[BlockingChannel, Any, pika.BasicProperties, bytes], None]


def tallied(
    tally: Tally,
    group: str,
    handler: Handler,
    *,
    stream: str | None = None,
    acks: bool = True,
    max_attempts: int | None = None,
) -> OnMessage:
    """An `on_message_callback` that reports every delivery and settles it."""

    def on_message(
        channel: BlockingChannel,
        method: Any,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        headers = headers_of(properties)
        received = Received(
            channel=channel,
            method=method,
            properties=properties,
            body=body,
            message_id=message_id_of(properties, body),
            attempt=attempt_of(method, properties),
            stream=stream or tally.stream or str(getattr(method, "routing_key", "")),
            headers=headers,
        )
        last = max_attempts is not None and received.attempt >= max_attempts
        try:
            with tally.processing(
                received.message_id,
                group=group,
                stream=received.stream,
                attempt=received.attempt,
                headers=headers,
            ) as delivery:
                received.delivery = delivery
                try:
                    handler(received)
                except Exception:
                    if not last:
                        raise
                    log.exception("msgtally: handler failed on its last attempt")
                    delivery.dead_letter()
                if last and delivery.outcome == "error":
                    delivery.dead_letter()
        except Exception:
            log.exception("msgtally: handler failed, message %s", received.message_id)
        if not acks:
            return
        tag = method.delivery_tag
        outcome = received.delivery.outcome
        if outcome == "ok":
            channel.basic_ack(tag)
        elif outcome == "dead_letter":
            channel.basic_reject(tag, requeue=False)
        else:
            channel.basic_nack(tag, requeue=True)

    return on_message
