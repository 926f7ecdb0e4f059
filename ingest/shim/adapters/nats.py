"""NATS JetStream adapter (nats-py, asyncio): tallied publish and a tallied handler.

In the adapters' common dialect (`msgtally.ingest.shim.adapters.common`):

- `Publisher(js, tally, *, stream=None)`; `await publisher.publish(subject,
  body=b"", *, message_id=None, headers=None, stream=None, attempt=1,
  timeout=None, expected_stream=None) -> PubAck`. Puts `msgtally-message-id`,
  the W3C `traceparent` and `Nats-Msg-Id` (JetStream de-duplication: a resend
  of the same id within the stream's duplicate window is stored once) in the
  headers. The PubAck is the confirmation: `produced` ok when it arrives,
  `error` (indeterminate) when the publish raises (timeout, no stream, API
  error); the error is re-raised.
- `tallied(tally, group, handler, *, stream=None, acks="after",
  max_attempts=None, nak_delay=None) -> JetStreamConsumer` wraps `async def
  handler(received)`; `await consumer(msg) -> Received` (usable as the `cb`
  of `js.subscribe(..., manual_ack=True)`, or on each message of a pull
  subscription's `fetch`). Reports every delivery with `tally.processing`.
- `Received`: the common one with nats-py's `msg`.
- `message_id_of(msg) -> str`, `attempt_of(msg) -> int`.

The record's stream is the message subject (or `stream=`), its group the
`group` given (the durable consumer's name, say). The message id is the
`msgtally-message-id` header, else `Nats-Msg-Id`, else `<jetstream
stream>:<stream sequence>`. The attempt is `msg.metadata.num_delivered`.

Ack policy (`acks=`):

- `"after"` (at least once, the default): the handler returns -> `ack()`,
  outcome ok. It raises (logged, not re-raised) or calls `received.failed()`
  -> `nak(delay=nak_delay)`, outcome error, JetStream redelivers.
  `received.dead_letter()`, or a failure on the last delivery
  (`num_delivered >= max_attempts`; give the consumer's `max_deliver`) ->
  `term()`, outcome dead_letter: JetStream stops redelivering and publishes
  a `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED` advisory, its dead-letter
  signal. Without `max_attempts`, the last failure is nak'ed and reported
  error; JetStream gives up (MAX_DELIVERIES advisory) and the id counts
  lost, not dead-lettered.
- `"before"` (at most once): `ack()` before the handler runs; a failure is
  reported error and never redelivered (counted lost if it never succeeds).
- `"manual"`: the handler acks itself; the wrapper only reports its outcome.

If the handler acked the message itself, the wrapper's ack is skipped. A
consumer that dies before acking gets the message redelivered after
`ack_wait` with a higher `num_delivered`: a duplicate if it had been
processed. `asyncio.CancelledError` is reported error and re-raised,
without a nak.

    js = nc.jetstream()
    publisher = Publisher(js, tally)
    ack = await publisher.publish("orders.eu", b"{...}")     # PubAck

    async def handle(msg: Received) -> None:
        ...                                                  # raise to nak

    consumer = tallied(tally, "billing", handle, max_attempts=5)
    sub = await js.pull_subscribe("orders.>", durable="billing",
                                  config=ConsumerConfig(max_deliver=5))
    for msg in await sub.fetch(10):
        await consumer(msg)
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MsgAlreadyAckdError
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from msgtally.ingest.shim.adapters import common
from msgtally.ingest.shim.adapters.common import (
    Acks,
    AsyncHandler,
    Consuming,
    RetryPolicy,
    Step,
    handling,
    steps,
)
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally

__all__ = [
    "NATS_MSG_ID",
    "JetStreamConsumer",
    "Publisher",
    "Received",
    "attempt_of",
    "message_id_of",
    "tallied",
]

NATS_MSG_ID = "Nats-Msg-Id"


class Publisher:
    """Publishes through a JetStream context and reports each send to a Tally."""

    def __init__(self, js: JetStreamContext, tally: Tally, *, stream: str | None = None) -> None:
        self.js = js
        self.tally = tally
        self.stream = stream

    async def publish(
        self,
        subject: str,
        body: bytes = b"",
        *,
        message_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        stream: str | None = None,
        attempt: int = 1,
        timeout: float | None = None,
        expected_stream: str | None = None,
    ) -> PubAck:
        """Publish and wait for the PubAck; resend with the same `message_id` and
        `attempt=n` to retry (JetStream drops the copy, `PubAck.duplicate`)."""
        given = dict(headers) if headers else {}
        mid = (
            message_id
            or given.get(MESSAGE_ID_HEADER)
            or given.get(NATS_MSG_ID)
            or common.new_message_id()
        )
        s = common.stream_for(self.tally, subject, stream, self.stream)
        with self.tally.sending(mid, stream=s, attempt=attempt) as sending:
            given.update(sending.headers)
            given[NATS_MSG_ID] = mid
            return await self.js.publish(
                subject, body, timeout=timeout, stream=expected_stream, headers=given
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


@dataclass(kw_only=True, eq=False)
class Received(common.Received[bytes]):
    """One delivery, as the handler sees it: the common fields and nats-py's `msg`."""

    msg: Msg


class JetStreamConsumer(Consuming[AsyncHandler[Received]]):
    """Wraps `async def handler(received)`; see the module docstring for the policy."""

    nak_delay: float | None = None

    async def __call__(self, msg: Msg) -> Received:
        """Report, run and settle one message; returns it with its outcome."""
        received = Received(
            msg=msg,
            body=msg.data,
            message_id=message_id_of(msg),
            attempt=attempt_of(msg),
            stream=common.stream_for(self.tally, msg.subject, self.stream),
            headers=msg.headers or {},
        )
        self.announce(received.stream)
        for step in steps(received, self.acks, self.max_attempts):
            if step == "run":
                with handling(self.tally, self.group, received, self.max_attempts):
                    await self.handler(received)
            elif step == "give_up":  # JetStream stops at max_deliver: not seen here
                with handling(self.tally, self.group, received, self.max_attempts):
                    received.dead_letter("poison")
            else:
                await _settle(self._settlement(msg, step))
        return received

    def _settlement(self, msg: Msg, step: Step) -> Awaitable[None]:
        if step == "ack":
            return msg.ack()
        if step == "dead_letter":
            return msg.term()
        return msg.nak(delay=self.nak_delay)


async def _settle(call: Awaitable[None]) -> None:
    """Ack/nak/term, unless the handler already settled the message itself."""
    with contextlib.suppress(MsgAlreadyAckdError):
        await call


def tallied(
    tally: Tally,
    group: str,
    handler: AsyncHandler[Received],
    *,
    stream: str | None = None,
    acks: Acks = "after",
    max_attempts: int | None = None,
    nak_delay: float | None = None,
    retry: RetryPolicy | None = None,
) -> JetStreamConsumer:
    """A consumer for `async def handler(received)`; see the module docstring. `retry`
    is announced (without it: a backoff of `nak_delay`, no jitter)."""
    if retry is None and nak_delay:
        retry = RetryPolicy(backoff_base=nak_delay)
    consumer = JetStreamConsumer(tally, group, handler, stream, acks, max_attempts, retry)
    consumer.nak_delay = nak_delay
    return consumer


if TYPE_CHECKING:

    def _keeps_the_contract(
        consumer: JetStreamConsumer,
    ) -> common.Consumer[[Msg], Awaitable[Received]]:
        return consumer  # mypy checks that the consumer keeps the common contract
