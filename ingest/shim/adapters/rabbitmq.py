"""RabbitMQ adapter for pika's BlockingConnection: confirmed publishes, tallied consumers.

Public API:

In the adapters' common dialect (`msgtally.ingest.shim.adapters.common`):

- `Publisher(channel, tally, *, exchange="", stream=None)`: turns on
  publisher confirms on `channel` (give it a channel that does not have them
  yet: pika refuses to turn them on twice); `.publish(routing_key, body, *,
  message_id=None, properties=None, exchange=None, mandatory=False,
  stream=None, attempt=1) -> str` publishes with the `msgtally-message-id`,
  `traceparent` (and `tracestate`) headers, sets the AMQP `message_id`
  property when unset, and returns the message id (uuid4 hex unless given or
  already in `properties.message_id`).
- `tallied(tally, group, handler, *, stream=None, acks="after",
  max_attempts=None, retry=None) -> RabbitConsumer`: an `on_message_callback` for
  `channel.basic_consume` (the `common.Consumer` contract); calls
  `handler(received)` inside `tally.processing`, then settles the message.
- `Received`: the common one (`message_id`, `attempt`, `stream`, `body`,
  `headers`, `.dead_letter()`, `.failed()`) with pika's `channel`, `method`
  and `properties`.
- `message_id_of(properties, body)`, `attempt_of(method, properties)`,
  `headers_of(properties)`: the consumer-side readings on their own
  (`common.body_digest` lets a producer without the adapter report the id a
  consumer will fall back to).

    tally = Tally(collector_url="http://collector:8410", system="rabbitmq")
    publisher = Publisher(channel, tally)
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
`common.body_digest(body)`: `sha256:` and the first 32 hex digits of the
SHA-256 of the body (stable across redeliveries; identical bodies share an
id, so only unique bodies are counted right).

Attempt: `x-delivery-count` + 1 when the header is there (quorum queues:
absent on a first delivery to a consumer, 0 on a first `basic_get` on
RabbitMQ 3.10, incremented by every requeue and every return from a closed
channel), and at least 2 when the `redelivered` flag is set (classic queues
only have the flag).

Ack policy, for `auto_ack=False` consumers (`acks="after"`, the default):
after the handler returns, `basic_ack`; after `received.dead_letter()`, or a
failure on attempt `max_attempts` or later, `basic_reject(requeue=False)` so
the broker routes the message through the queue's `x-dead-letter-exchange`
(reported `dead_letter`); after an exception or `received.failed()`,
`basic_nack(requeue=True)` (reported `error`: the broker redelivers it with
a higher attempt). A delivery past `max_attempts` is rejected without
running the handler. The handler's exception is logged and not re-raised,
so one bad message does not stop `start_consuming`. The consume record is
emitted before the ack: a crash between the two is a redelivery, counted as
a duplicate, which it is. `acks="before"`: `basic_ack` before the handler
(at most once). `acks="manual"`: the adapter only reports; use it with
`auto_ack=True` consumers or when the caller acks itself (batched
`multiple=True` acks).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from msgtally.ingest.shim.adapters import common
from msgtally.ingest.shim.adapters.common import Acks, Handler, RetryPolicy, Step, Tallied
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally

__all__ = [
    "Publisher",
    "RabbitConsumer",
    "Received",
    "attempt_of",
    "headers_of",
    "message_id_of",
    "tallied",
]

DELIVERY_COUNT_HEADER = "x-delivery-count"


class Publisher:
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
        mid = str(message_id or props.message_id or common.new_message_id())
        s = common.stream_for(self.tally, routing_key, stream, self.stream)
        with self.tally.sending(mid, stream=s, attempt=attempt) as sending:
            props.headers = {**(props.headers or {}), **sending.headers}
            if not props.message_id:
                props.message_id = mid
            self.channel.basic_publish(
                self.exchange if exchange is None else exchange,
                routing_key,
                body,
                props,
                mandatory,
            )
        return mid


def headers_of(properties: pika.BasicProperties) -> dict[str, str]:
    """The message's string headers (bytes decoded as UTF-8), others left out."""
    raw = getattr(properties, "headers", None)
    return common.text_headers(raw.items()) if isinstance(raw, Mapping) else {}


def message_id_of(properties: pika.BasicProperties, body: bytes) -> str:
    """msgtally header, else the AMQP message_id property, else a body digest."""
    mid = headers_of(properties).get(MESSAGE_ID_HEADER)
    if mid:
        return mid
    prop = getattr(properties, "message_id", None)
    if isinstance(prop, str) and prop:
        return prop
    return common.body_digest(body)


def attempt_of(method: Any, properties: pika.BasicProperties) -> int:
    """Delivery attempt from `x-delivery-count` and the `redelivered` flag."""
    attempt = 2 if getattr(method, "redelivered", False) else 1
    raw = getattr(properties, "headers", None)
    count = raw.get(DELIVERY_COUNT_HEADER) if isinstance(raw, Mapping) else None
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        attempt = max(attempt, count + 1)
    return attempt


@dataclass(kw_only=True, eq=False)
class Received(common.Received[bytes]):
    """One delivery, as the handler sees it: the common fields and pika's own."""

    channel: BlockingChannel
    method: Any
    properties: pika.BasicProperties


class RabbitConsumer(Tallied[Received]):
    """An `on_message_callback`; see the module docstring for the ack policy."""

    def __call__(
        self,
        channel: BlockingChannel,
        method: Any,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> Received:
        routing_key = str(getattr(method, "routing_key", ""))
        return self.consume(
            Received(
                channel=channel,
                method=method,
                properties=properties,
                body=body,
                message_id=message_id_of(properties, body),
                attempt=attempt_of(method, properties),
                stream=common.stream_for(self.tally, routing_key, self.stream),
                headers=headers_of(properties),
            )
        )

    def settle(self, received: Received, step: Step) -> None:
        tag = received.method.delivery_tag
        if step == "ack":
            received.channel.basic_ack(tag)
        elif step == "dead_letter":
            received.channel.basic_reject(tag, requeue=False)  # through the queue's DLX
        else:
            received.channel.basic_nack(tag, requeue=True)


def tallied(
    tally: Tally,
    group: str,
    handler: Handler[Received],
    *,
    stream: str | None = None,
    acks: Acks = "after",
    max_attempts: int | None = None,
    retry: RetryPolicy | None = None,
) -> RabbitConsumer:
    """An `on_message_callback` that reports every delivery and settles it; `retry`:
    the queue's redelivery backoff and dead-letter exchange, announced."""
    return RabbitConsumer(tally, group, handler, stream, acks, max_attempts, retry)


if TYPE_CHECKING:

    def _keeps_the_contract(
        consumer: RabbitConsumer,
    ) -> common.Consumer[[BlockingChannel, Any, pika.BasicProperties, bytes], Received]:
        return consumer  # mypy checks that the consumer keeps the common contract
