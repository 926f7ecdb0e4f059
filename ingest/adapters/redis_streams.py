"""Redis Streams adapter (redis-py, sync client): tallied XADD and a tallied consumer.

Public API:

- `StreamProducer(client, tally, *, stream=None)`; `producer.add(key, fields, *,
  message_id=None, attempt=1, maxlen=None, approximate=True) -> str` (the entry
  id). Adds the fields `msgtally-message-id` and `traceparent` (W3C). The XADD
  reply is the confirmation: `produced` ok when it returns, `error`
  (indeterminate) when it raises; the error is re-raised.
- `StreamConsumer(client, tally, key, group, consumer, handler, *, stream=None,
  ack="after", max_deliveries=5, dead_letter_key=None)` for
  `def handler(entry: StreamEntry, delivery: Delivery) -> None`:
  - `create_group(start_id="0") -> bool`: XGROUP CREATE ... MKSTREAM (False if
    the group exists);
  - `read(count=10, block_ms=None) -> list[Handled]`: new entries, XREADGROUP `>`
    (attempt 1);
  - `claim(min_idle_ms, count=10) -> list[Handled]`: XAUTOCLAIM of entries another
    consumer left pending (it crashed or failed) for `min_idle_ms`;
  - `recover(count=10) -> list[Handled]`: this consumer's own pending entries,
    after a restart under the same consumer name (XREADGROUP `0`);
  - `handle(entry_id, fields, attempt) -> Handled`: one entry.
- `StreamEntry(key, entry_id, fields, message_id, attempt)`,
  `Handled(entry_id, message_id, attempt, outcome)`,
  `message_id_of(entry_id, fields) -> str`, `headers_of(fields) -> dict[str, str]`.

The record's stream is the stream key (or `stream=`), its group the consumer
group. The message id is the `msgtally-message-id` field, else the stream entry
id. The attempt is the entry's delivery count: 1 from XREADGROUP `>`, and read
back with XPENDING after XAUTOCLAIM and history reads, which increment it.

Ack policy (`ack=`):

- `"after"` (at least once, the default): the handler returns -> XACK, outcome
  ok. It raises (logged, not re-raised) or calls `delivery.failed()` -> no
  XACK, outcome error: the entry stays pending and is redelivered by a later
  `claim()` / `recover()`. A failure at delivery `max_deliveries`, or
  `delivery.dead_letter()`, moves the entry to the dead-letter stream
  (`dead_letter_key`, default `<key>:dead-letter`; the fields plus
  `msgtally-dead-letter-of`, `-entry`, `-group` and `msgtally-delivery-count`) and
  XACKs it in one MULTI/EXEC, outcome dead_letter. An entry claimed with a
  delivery count above `max_deliveries` (consumers kept dying on it) is moved
  the same way without running the handler, and reported dead_letter.
- `"before"` (at most once): XACK before the handler; a failure is reported
  error and never redelivered. `delivery.dead_letter()` still copies the entry
  to the dead-letter stream.
- `"manual"`: the handler XACKs itself; the wrapper only reports its outcome.

    r = redis.Redis()
    producer = StreamProducer(r, tally)
    producer.add("orders", {"body": payload})

    def handle(entry: StreamEntry, delivery: Delivery) -> None:
        ...                                            # raise to retry later

    consumer = StreamConsumer(r, tally, "orders", "billing", "billing-1", handle)
    consumer.create_group()
    while running:
        consumer.claim(min_idle_ms=30_000)             # what crashed consumers left
        consumer.read(count=100, block_ms=1_000)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import redis
from redis.typing import EncodableT, FieldT

from ..sdk import MESSAGE_ID_HEADER, Delivery, Tally

__all__ = [
    "AckPolicy",
    "Handled",
    "StreamConsumer",
    "StreamEntry",
    "StreamProducer",
    "headers_of",
    "message_id_of",
]

log = logging.getLogger("msgtally.adapters.redis_streams")

AckPolicy = Literal["after", "before", "manual"]
DEAD_LETTER_OF = "msgtally-dead-letter-of"
DEAD_LETTER_ENTRY = "msgtally-dead-letter-entry"
DEAD_LETTER_GROUP = "msgtally-dead-letter-group"
DELIVERY_COUNT = "msgtally-delivery-count"
_HEADER_FIELDS = (MESSAGE_ID_HEADER, "traceparent", "tracestate")


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def headers_of(fields: Mapping[Any, Any] | None) -> dict[str, str]:
    """The message id and trace context fields of an entry, as text."""
    out: dict[str, str] = {}
    for name, value in (fields or {}).items():
        key = _text(name)
        if key in _HEADER_FIELDS:
            out[key] = _text(value)
    return out


def message_id_of(entry_id: object, fields: Mapping[Any, Any] | None) -> str:
    """The producer's `msgtally-message-id` field, else the stream entry id."""
    return headers_of(fields).get(MESSAGE_ID_HEADER) or _text(entry_id)


class StreamProducer:
    """XADD with the message id and trace context, reported to a Tally."""

    def __init__(self, client: redis.Redis, tally: Tally, *, stream: str | None = None) -> None:
        self.client = client
        self.tally = tally
        self.stream = stream

    def add(
        self,
        key: str,
        fields: Mapping[str, EncodableT],
        *,
        message_id: str | None = None,
        attempt: int = 1,
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> str:
        """XADD one entry; returns its id. Resend with the same `message_id` and
        `attempt=n` to retry an indeterminate add."""
        given: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
        mid = message_id or _text(given.get(MESSAGE_ID_HEADER)) or uuid.uuid4().hex
        with self.tally.sending(mid, stream=self.stream or key, attempt=attempt) as headers:
            given.update(headers)
            return _text(self.client.xadd(key, given, maxlen=maxlen, approximate=approximate))


@dataclass(frozen=True)
class StreamEntry:
    """One delivery, as the handler sees it (`fields` as the client returned them)."""

    key: str
    entry_id: str
    fields: Mapping[Any, Any]
    message_id: str
    attempt: int


@dataclass(frozen=True)
class Handled:
    entry_id: str
    message_id: str
    attempt: int
    outcome: str  # ok, error or dead_letter


class StreamConsumer:
    """One consumer of a consumer group; see the module docstring for the policy."""

    def __init__(
        self,
        client: redis.Redis,
        tally: Tally,
        key: str,
        group: str,
        consumer: str,
        handler: Callable[[StreamEntry, Delivery], None],
        *,
        stream: str | None = None,
        ack: AckPolicy = "after",
        max_deliveries: int | None = 5,
        dead_letter_key: str | None = None,
    ) -> None:
        if ack not in ("after", "before", "manual"):
            raise ValueError(f"ack has value {ack!r}. Must be 'after', 'before' or 'manual'.")
        self.client = client
        self.tally = tally
        self.key = key
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.stream = stream or key
        self.ack = ack
        self.max_deliveries = max_deliveries
        self.dead_letter_key = dead_letter_key or f"{key}:dead-letter"

    def create_group(self, start_id: str = "0") -> bool:
        """Create the group (and the stream); False when it already exists."""
        try:
            self.client.xgroup_create(self.key, self.group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def read(self, count: int = 10, block_ms: int | None = None) -> list[Handled]:
        """Handle up to `count` new entries (delivery count 1)."""
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.key: ">"}, count=count, block=block_ms
        )
        return [self.handle(eid, fields, 1) for eid, fields in _entries(reply)]

    def claim(self, min_idle_ms: int, count: int = 10) -> list[Handled]:
        """XAUTOCLAIM up to `count` entries pending for `min_idle_ms` and handle them."""
        claimed: list[tuple[Any, Any]] = []
        cursor: Any = "0-0"
        while len(claimed) < count:
            reply: Any = self.client.xautoclaim(
                self.key,
                self.group,
                self.consumer,
                min_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            cursor = reply[0]
            claimed.extend((eid, fields) for eid, fields in reply[1] if fields is not None)
            if _text(cursor) == "0-0":
                break
        return self._handle_redelivered(claimed)

    def recover(self, count: int = 10) -> list[Handled]:
        """Handle this consumer's own pending entries (read before a restart)."""
        reply: Any = self.client.xreadgroup(self.group, self.consumer, {self.key: "0"}, count=count)
        return self._handle_redelivered(
            [(eid, fields) for eid, fields in _entries(reply) if fields]
        )

    def _handle_redelivered(self, entries: list[tuple[Any, Any]]) -> list[Handled]:
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for eid, _ in entries:
            pipe.xpending_range(self.key, self.group, min=eid, max=eid, count=1)
        counts = pipe.execute()
        out = []
        for (eid, fields), pending in zip(entries, counts, strict=True):
            if pending:  # else acknowledged meanwhile: nothing left to do
                out.append(self.handle(eid, fields, int(pending[0]["times_delivered"])))
        return out

    def handle(self, entry_id: Any, fields: Mapping[Any, Any], attempt: int) -> Handled:
        """Run the handler on one entry delivered for the `attempt`-th time."""
        eid = _text(entry_id)
        headers = headers_of(fields)
        entry = StreamEntry(self.key, eid, fields, headers.get(MESSAGE_ID_HEADER) or eid, attempt)
        mid = entry.message_id
        cap = self.max_deliveries
        if self.ack == "after" and cap is not None and cap > 0 and attempt > cap:
            self._dead_letter(entry)  # consumers kept dying on it: do not run it again
            self.tally.consumed(
                mid,
                group=self.group,
                stream=self.stream,
                attempt=attempt,
                outcome="dead_letter",
                headers=headers,
            )
            return Handled(eid, mid, attempt, "dead_letter")
        if self.ack == "before":
            self.client.xack(self.key, self.group, eid)
        with self.tally.processing(
            mid, group=self.group, stream=self.stream, attempt=attempt, headers=headers
        ) as delivery:
            try:
                self.handler(entry, delivery)
            except Exception:
                log.exception("handler failed on %s %s (attempt %d)", self.key, eid, attempt)
                delivery.failed()
            if self.ack == "after" and delivery.outcome == "error" and cap and attempt >= cap:
                delivery.dead_letter()
            if self.ack != "manual" and delivery.outcome == "dead_letter":
                self._dead_letter(entry)
            outcome = delivery.outcome
        if self.ack == "after" and outcome == "ok":
            self.client.xack(self.key, self.group, eid)
        return Handled(eid, mid, attempt, outcome)

    def _dead_letter(self, entry: StreamEntry) -> None:
        """Copy the entry to the dead-letter stream and XACK it, atomically."""
        fields: dict[FieldT, EncodableT] = {_text(k): v for k, v in entry.fields.items()}
        fields[MESSAGE_ID_HEADER] = entry.message_id
        fields[DEAD_LETTER_OF] = self.key
        fields[DEAD_LETTER_ENTRY] = entry.entry_id
        fields[DEAD_LETTER_GROUP] = self.group
        fields[DELIVERY_COUNT] = entry.attempt
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_key, fields)
        if self.ack == "after":
            pipe.xack(self.key, self.group, entry.entry_id)
        pipe.execute()


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (entry id, fields) pairs of an XREADGROUP reply for one stream (RESP2 or 3)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {key: [entries]}
        streams = list(reply.values())
        return [tuple(e) for e in streams[0][0]] if streams and streams[0] else []
    return [(eid, fields) for eid, fields in reply[0][1]]
