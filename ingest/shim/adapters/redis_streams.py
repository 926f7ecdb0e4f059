"""Redis Streams adapter (redis-py, sync client): tallied XADD and a tallied consumer.

In the adapters' common dialect (`msgtally.ingest.shim.adapters.common`):

- `Publisher(client, tally, *, stream=None)`; `publisher.publish(key, fields, *,
  message_id=None, stream=None, attempt=1, maxlen=None, approximate=True) ->
  str` (the entry id). Adds the fields `msgtally-message-id` and
  `traceparent` (W3C). The XADD reply is the confirmation: `produced` ok
  when it returns, `error` (indeterminate) when it raises; the error is
  re-raised.
- `Consumer(client, tally, key, group, name, handler, *, stream=None,
  acks="after", max_attempts=5, dead_letter_key=None)` for `def
  handler(received)` (the `common.Consumer` contract; Redis has no push, so
  the consumer reads for itself):
  - `create_group(start_id="0") -> bool`: XGROUP CREATE ... MKSTREAM (False if
    the group exists);
  - `read(count=10, block_ms=None) -> list[Received]`: new entries, XREADGROUP
    `>` (attempt 1);
  - `claim(min_idle_ms, count=10) -> list[Received]`: XAUTOCLAIM of entries
    another consumer left pending (it crashed or failed) for `min_idle_ms`;
  - `recover(count=10) -> list[Received]`: this consumer's own pending
    entries, after a restart under the same consumer name (XREADGROUP `0`);
  - `consumer(entry_id, fields, attempt) -> Received`: one entry.
- `Received`: the common one (`body` is the entry's fields, as the client
  returned them) with the stream `key` and the `entry_id`.
- `message_id_of(entry_id, fields) -> str`, `headers_of(fields) -> dict[str, str]`.

The record's stream is the stream key (or `stream=`), its group the consumer
group. The message id is the `msgtally-message-id` field, else the stream entry
id. The attempt is the entry's delivery count: 1 from XREADGROUP `>`, and read
back with XPENDING after XAUTOCLAIM and history reads, which increment it.

Ack policy (`acks=`):

- `"after"` (at least once, the default): the handler returns -> XACK, outcome
  ok. It raises (logged, not re-raised) or calls `received.failed()` -> no
  XACK, outcome error: the entry stays pending and is redelivered by a later
  `claim()` / `recover()`. A failure at delivery `max_attempts`, or
  `received.dead_letter()`, moves the entry to the dead-letter stream
  (`dead_letter_key`, default `<key>:dead-letter`; the fields plus
  `msgtally-dead-letter-of`, `-entry`, `-group` and `msgtally-delivery-count`) and
  XACKs it in one MULTI/EXEC, outcome dead_letter. An entry claimed with a
  delivery count above `max_attempts` (consumers kept dying on it) is moved
  the same way without running the handler, and reported dead_letter.
- `"before"` (at most once): XACK before the handler; a failure is reported
  error and never redelivered.
- `"manual"`: the handler XACKs itself; the wrapper only reports its outcome.

    r = redis.Redis()
    publisher = Publisher(r, tally)
    publisher.publish("orders", {"body": payload})

    def handle(msg: Received) -> None:
        ...                                            # raise to retry later

    consumer = Consumer(r, tally, "orders", "billing", "billing-1", handle)
    consumer.create_group()
    while running:
        consumer.claim(min_idle_ms=30_000)             # what crashed consumers left
        consumer.read(count=100, block_ms=1_000)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import redis
from redis.typing import EncodableT, FieldT

from msgtally.ingest.shim.adapters import common
from msgtally.ingest.shim.adapters.common import Acks, Handler, RetryPolicy, Step, Tallied
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally

__all__ = [
    "Consumer",
    "Publisher",
    "Received",
    "headers_of",
    "message_id_of",
]

DEAD_LETTER_OF = "msgtally-dead-letter-of"
DEAD_LETTER_ENTRY = "msgtally-dead-letter-entry"
DEAD_LETTER_GROUP = "msgtally-dead-letter-group"
DELIVERY_COUNT = "msgtally-delivery-count"
_HEADER_FIELDS = (MESSAGE_ID_HEADER, "traceparent", "tracestate")
Fields = Mapping[Any, Any]  # bytes or str keys and values, as the client decodes


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def headers_of(fields: Fields | None) -> dict[str, str]:
    """The message id and trace context fields of an entry, as text."""
    found = common.text_headers((fields or {}).items())
    return {k: v for k, v in found.items() if k in _HEADER_FIELDS}


def message_id_of(entry_id: object, fields: Fields | None) -> str:
    """The producer's `msgtally-message-id` field, else the stream entry id."""
    return headers_of(fields).get(MESSAGE_ID_HEADER) or _text(entry_id)


class Publisher:
    """XADD with the message id and trace context, reported to a Tally."""

    def __init__(self, client: redis.Redis, tally: Tally, *, stream: str | None = None) -> None:
        self.client = client
        self.tally = tally
        self.stream = stream

    def publish(
        self,
        key: str,
        fields: Mapping[str, EncodableT],
        *,
        message_id: str | None = None,
        stream: str | None = None,
        attempt: int = 1,
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> str:
        """XADD one entry; returns its id. Resend with the same `message_id` and
        `attempt=n` to retry an indeterminate add."""
        given: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
        mid = message_id or _text(given.get(MESSAGE_ID_HEADER)) or common.new_message_id()
        s = common.stream_for(self.tally, key, stream, self.stream)
        with self.tally.sending(mid, stream=s, attempt=attempt) as sending:
            given.update(sending.headers)
            return _text(self.client.xadd(key, given, maxlen=maxlen, approximate=approximate))


@dataclass(kw_only=True, eq=False)
class Received(common.Received[Fields]):
    """One delivery, as the handler sees it; `body` is the entry's fields."""

    key: str
    entry_id: str


class Consumer(Tallied[Received]):
    """One consumer of a consumer group; see the module docstring for the policy."""

    def __init__(
        self,
        client: redis.Redis,
        tally: Tally,
        key: str,
        group: str,
        name: str,
        handler: Handler[Received],
        *,
        stream: str | None = None,
        acks: Acks = "after",
        max_attempts: int | None = 5,
        dead_letter_key: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        dead_letter_key = dead_letter_key or f"{key}:dead-letter"
        # `retry` is announced, its dead-letter target the dead-letter key unless given.
        if retry is None or retry.dead_letter is None:
            retry = replace(retry or RetryPolicy(), dead_letter=dead_letter_key)
        super().__init__(
            tally, group, handler, stream=stream, acks=acks, max_attempts=max_attempts,
            retry=retry,
        )  # fmt: skip
        self.client = client
        self.key = key
        self.name = name
        self.dead_letter_key = dead_letter_key

    def create_group(self, start_id: str = "0") -> bool:
        """Create the group (and the stream); False when it already exists."""
        try:
            self.client.xgroup_create(self.key, self.group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def read(self, count: int = 10, block_ms: int | None = None) -> list[Received]:
        """Handle up to `count` new entries (delivery count 1)."""
        reply: Any = self.client.xreadgroup(
            self.group, self.name, {self.key: ">"}, count=count, block=block_ms
        )
        return [self(eid, fields, 1) for eid, fields in _entries(reply)]

    def claim(self, min_idle_ms: int, count: int = 10) -> list[Received]:
        """XAUTOCLAIM up to `count` entries pending for `min_idle_ms` and handle them."""
        claimed: list[tuple[Any, Any]] = []
        cursor: Any = "0-0"
        while len(claimed) < count:
            reply: Any = self.client.xautoclaim(
                self.key,
                self.group,
                self.name,
                min_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            cursor = reply[0]
            claimed.extend((eid, fields) for eid, fields in reply[1] if fields is not None)
            if _text(cursor) == "0-0":
                break
        return self._handle_redelivered(claimed)

    def recover(self, count: int = 10) -> list[Received]:
        """Handle this consumer's own pending entries (read before a restart)."""
        reply: Any = self.client.xreadgroup(self.group, self.name, {self.key: "0"}, count=count)
        return self._handle_redelivered(
            [(eid, fields) for eid, fields in _entries(reply) if fields]
        )

    def _handle_redelivered(self, entries: list[tuple[Any, Any]]) -> list[Received]:
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for eid, _ in entries:
            pipe.xpending_range(self.key, self.group, min=eid, max=eid, count=1)
        counts = pipe.execute()
        out = []
        for (eid, fields), pending in zip(entries, counts, strict=True):
            if pending:  # else acknowledged meanwhile: nothing left to do
                out.append(self(eid, fields, int(pending[0]["times_delivered"])))
        return out

    def __call__(self, entry_id: Any, fields: Fields, attempt: int) -> Received:
        """Report, run and settle one entry delivered for the `attempt`-th time."""
        eid = _text(entry_id)
        return self.consume(
            Received(
                key=self.key,
                entry_id=eid,
                body=fields,
                message_id=message_id_of(eid, fields),
                attempt=attempt,
                stream=common.stream_for(self.tally, self.key, self.stream),
                headers=headers_of(fields),
            )
        )

    def settle(self, received: Received, step: Step) -> None:
        if step == "ack":
            self.client.xack(self.key, self.group, received.entry_id)
        elif step == "dead_letter":
            self._dead_letter(received)
        # "retry": left pending, for a later claim() or recover()

    def _dead_letter(self, received: Received) -> None:
        """Copy the entry to the dead-letter stream and XACK it, atomically."""
        fields: dict[FieldT, EncodableT] = {_text(k): v for k, v in received.body.items()}
        fields[MESSAGE_ID_HEADER] = received.message_id
        fields[DEAD_LETTER_OF] = self.key
        fields[DEAD_LETTER_ENTRY] = received.entry_id
        fields[DEAD_LETTER_GROUP] = self.group
        fields[DELIVERY_COUNT] = received.attempt
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_key, fields)
        pipe.xack(self.key, self.group, received.entry_id)
        pipe.execute()


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (entry id, fields) pairs of an XREADGROUP reply for one stream (RESP2 or 3)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {key: [entries]}
        streams = list(reply.values())
        return [tuple(e) for e in streams[0][0]] if streams and streams[0] else []
    return [(eid, fields) for eid, fields in reply[0][1]]


if TYPE_CHECKING:

    def _keeps_the_contract(consumer: Consumer) -> common.Consumer[[Any, Fields, int], Received]:
        return consumer  # mypy checks that the consumer keeps the common contract
