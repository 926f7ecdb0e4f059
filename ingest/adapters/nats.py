"""NATS JetStream adapter (nats-py, asyncio): tallied publish and a tallied handler.

Public API:

- `JetStreamProducer(js, tally, *, stream=None)`; `await producer.publish(subject,
  payload=b"", *, message_id=None, headers=None, attempt=1, timeout=None,
  expected_stream=None) -> PubAck`. Puts `msgtally-message-id`, the W3C
  `traceparent` and `Nats-Msg-Id` (JetStream de-duplication: a resend of the same
  id within the stream's duplicate window is stored once) in the headers. The
  PubAck is the confirmation: `produced` ok when it arrives, `error`
  (indeterminate) when the publish raises (timeout, no stream, API error); the
  error is re-raised.
- `JetStreamHandler(tally, handler, *, group=None, stream=None, ack="after",
  max_deliver=None, nak_delay=None)`: wraps `async def handler(msg, delivery)`;
  `await wrapped.handle(msg) -> outcome` (or `await wrapped(msg)`, usable as the
  `cb` of `js.subscribe(..., manual_ack=True)`). Reports every delivery with
  `tally.processing`.
- `message_id_of(msg) -> str`, `attempt_of(msg) -> int`.

The record's stream is the message subject (or `stream=`), its group the durable
consumer name (or `group=`; pass it for ephemeral consumers, whose names change).
The message id is the `msgtally-message-id` header, else `Nats-Msg-Id`, else
`<jetstream stream>:<stream sequence>`. The attempt is `msg.metadata.num_delivered`.

Ack policy of the handler (`ack=`):

- `"after"` (at least once, the default): the handler returns -> `ack()`, outcome
  ok. It raises (logged, not re-raised: the outcome is returned) or calls
  `delivery.failed()` -> `nak(delay=nak_delay)`, outcome error, JetStream
  redelivers. `delivery.dead_letter()`, or a failure on the last delivery
  (`num_delivered >= max_deliver`, when given) -> `term()`, outcome dead_letter:
  JetStream stops redelivering and publishes a
  `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED` advisory, its dead-letter signal.
  Without `max_deliver`, the last failure is nak'ed and reported error; JetStream
  gives up (MAX_DELIVERIES advisory) and the id counts lost, not dead-lettered.
- `"before"` (at most once): `ack()` before the handler runs; a failure is
  reported error and never redelivered (counted lost if it never succeeds).
- `"manual"`: the handler acks itself; the wrapper only reports its outcome.

If the handler acked the message itself, the wrapper's ack is skipped. A
consumer that dies before acking gets the message redelivered after `ack_wait`
with a higher `num_delivered`: a duplicate if it had been processed.
`asyncio.CancelledError` is reported error and re-raised, without a nak.

    js = nc.jetstream()
    producer = JetStreamProducer(js, tally)
    ack = await producer.publish("orders.eu", b"{...}")      # PubAck

    async def handle(msg: Msg, delivery: Delivery) -> None:
        ...                                                  # raise to nak

    wrapped = JetStreamHandler(tally, handle, max_deliver=5)
    sub = await js.pull_subscribe("orders.>", durable="billing",
                                  config=ConsumerConfig(max_deliver=5))
    for msg in await sub.fetch(10):
        await wrapped.handle(msg)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MsgAlreadyAckdError
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from ..sdk import MESSAGE_ID_HEADER, Delivery, Tally

__all__ = [
    "NATS_MSG_ID",
    "AckPolicy",
    "JetStreamHandler",
    "JetStreamProducer",
    "attempt_of",
    "message_id_of",
]

log = logging.getLogger("msgtally.adapters.nats")

NATS_MSG_ID = "Nats-Msg-Id"
AckPolicy = Literal["after", "before", "manual"]
Handler = Callable[[Msg, Delivery], Awaitable[None]]


class JetStreamProducer:
    """Publishes through a JetStream context and reports each send to a Tally."""

    def __init__(self, js: JetStreamContext, tally: Tally, *, stream: str | None = None) -> None:
        self.js = js
        self.tally = tally
        self.stream = stream

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        message_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        attempt: int = 1,
        timeout: float | None = None,
        expected_stream: str | None = None,
    ) -> PubAck:
        """Publish and wait for the PubAck; resend with the same `message_id` and
        `attempt=n` to retry (JetStream drops the copy, `PubAck.duplicate`)."""
        given = dict(headers) if headers else {}
        mid = (
            message_id or given.get(MESSAGE_ID_HEADER) or given.get(NATS_MSG_ID) or uuid.uuid4().hex
        )
        with self.tally.sending(mid, stream=self.stream or subject, attempt=attempt) as tally_hdrs:
            given.update(tally_hdrs)
            given[NATS_MSG_ID] = mid
            return await self.js.publish(
                subject, payload, timeout=timeout, stream=expected_stream, headers=given
            )


def _metadata(msg: Msg) -> Msg.Metadata | None:
    try:
        return msg.metadata
    except (NatsError, ValueError, IndexError):  # not a JetStream message
        return None


def message_id_of(msg: Msg) -> str:
    """The producer's id from the headers, else the JetStream `stream:sequence`."""
    headers = msg.headers or {}
    found = headers.get(MESSAGE_ID_HEADER) or headers.get(NATS_MSG_ID)
    if found:
        return found
    meta = _metadata(msg)
    if meta is None:
        return ""  # core NATS without headers: no id to report (counted as dropped)
    return f"{meta.stream}:{meta.sequence.stream}"


def attempt_of(msg: Msg) -> int:
    """The delivery attempt: JetStream's `num_delivered` (1 for core NATS)."""
    meta = _metadata(msg)
    return meta.num_delivered if meta is not None and meta.num_delivered >= 1 else 1


class JetStreamHandler:
    """Wraps `async def handler(msg, delivery)`: reports, then acks per `ack`."""

    def __init__(
        self,
        tally: Tally,
        handler: Handler,
        *,
        group: str | None = None,
        stream: str | None = None,
        ack: AckPolicy = "after",
        max_deliver: int | None = None,
        nak_delay: float | None = None,
    ) -> None:
        if ack not in ("after", "before", "manual"):
            raise ValueError(f"ack has value {ack!r}. Must be 'after', 'before' or 'manual'.")
        self.tally = tally
        self.handler = handler
        self.group = group
        self.stream = stream
        self.ack = ack
        self.max_deliver = max_deliver
        self.nak_delay = nak_delay

    async def __call__(self, msg: Msg) -> None:
        await self.handle(msg)

    async def handle(self, msg: Msg) -> str:
        """Run the handler on one message; returns ok, error or dead_letter."""
        meta = _metadata(msg)
        attempt = attempt_of(msg)
        group = self.group or (meta.consumer if meta is not None else "")
        last = self.max_deliver is not None and 0 < self.max_deliver <= attempt
        if self.ack == "before":
            await msg.ack()
        with self.tally.processing(
            message_id_of(msg),
            group=group,
            stream=self.stream or msg.subject,
            attempt=attempt,
            headers=msg.headers,
        ) as delivery:
            try:
                await self.handler(msg, delivery)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler failed on %s (attempt %d)", msg.subject, attempt)
                delivery.failed()
            if self.ack == "after":
                if delivery.outcome == "error" and last:
                    delivery.dead_letter()
                if delivery.outcome == "dead_letter":
                    await _settle(msg.term())
            outcome = delivery.outcome
        if self.ack == "after":
            if outcome == "ok":
                await _settle(msg.ack())
            elif outcome == "error":
                await _settle(msg.nak(delay=self.nak_delay))
        return outcome


async def _settle(call: Awaitable[None]) -> None:
    """Ack/nak/term, unless the handler already settled the message itself."""
    with contextlib.suppress(MsgAlreadyAckdError):
        await call
