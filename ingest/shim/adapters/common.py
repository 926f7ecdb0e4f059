"""What every broker adapter shares: one vocabulary and one consumer contract.

Every adapter module speaks the same dialect:

- `Publisher(client, tally, *, stream=None, ...)`, `.publish(destination, body,
  *, message_id=None, stream=None, attempt=1, ...)`: sends with the message id
  and the W3C trace context in the message's headers and reports the produce
  (`ok` once the broker confirmed it, `error` when that is not known).
- `tallied(tally, group, handler, *, stream=None, acks="after",
  max_attempts=None, ...)`: wraps `handler(received)` for a consumer group
  (the `Consumer` contract below); Redis Streams and Kafka, whose consumers
  read for themselves, have a `Consumer(...)` with the same words.
- `Received`: what the handler gets, whatever the broker.

Stream, everywhere: the call's `stream=`, else the publisher's or consumer's,
else `tally.stream`, else the destination (queue, subject, key, topic).

Every consumer announces its retry configuration (msgtally.ingest.shim.announce)
per stream and group: its `acks` and `max_attempts`, and the `retry=`
`RetryPolicy` it is given (backoff, jitter, dead-letter target: the broker's
or the service's settings, which the adapter cannot read), or what the
adapter itself knows of them (a dead-letter topic or key). It announces when
made, if its stream is known then, and on every delivery of a stream it has
not announced (one dict lookup otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Literal, ParamSpec, Protocol, TypeVar

from msgtally.ingest.shim.announce import RetryConfig, RetryPolicy
from msgtally.ingest.shim.classify import classify
from msgtally.ingest.shim.tally import Delivery, Tally

__all__ = [
    "Acks",
    "AsyncHandler",
    "Consumer",
    "Consuming",
    "Handler",
    "Outcome",
    "Received",
    "RetryPolicy",
    "Step",
    "Tallied",
    "body_digest",
    "check_acks",
    "handling",
    "is_last",
    "new_message_id",
    "steps",
    "stream_for",
    "text_headers",
]

log = logging.getLogger(__name__)

Outcome = Literal["ok", "error", "dead_letter"]
Acks = Literal["after", "before", "manual"]
_ACKS = ("after", "before", "manual")

B = TypeVar("B")


@dataclass(kw_only=True, eq=False)
class Received(Generic[B]):
    """One delivery, as the handler sees it, whatever the broker.

    `body` is the message's payload (bytes; a Redis entry's fields); each
    adapter's subclass adds the client library's own objects.
    """

    message_id: str
    attempt: int
    stream: str
    body: B
    headers: Mapping[str, str]
    delivery: Delivery = field(default_factory=Delivery, repr=False)

    @property
    def outcome(self) -> Outcome:
        """ok, error or dead_letter: what is (or will be) reported."""
        outcome: Outcome = self.delivery.outcome  # type: ignore[assignment]
        return outcome

    @property
    def error(self) -> str | None:
        """The failure's class (msgtally.record.ERROR_CLASSES), None when not classified."""
        return self.delivery.error

    def dead_letter(self, error: str | None = None) -> None:
        """Give up on it: the broker's dead-letter route takes it (`error`: why,
        e.g. "poison" or "serialization", when known)."""
        self.delivery.dead_letter(error)

    def failed(self, error: str | None = None) -> None:
        """Processing failed without an exception: it is left for redelivery
        (`error`: the failure's class, when known)."""
        self.delivery.failed(error)


R = TypeVar("R", bound=Received)  # type: ignore[type-arg]
Handler = Callable[[R], object]
AsyncHandler = Callable[[R], Awaitable[object]]
P = ParamSpec("P")
T_co = TypeVar("T_co", covariant=True)


class Consumer(Protocol[P, T_co]):
    """The consumer contract, the same in every adapter.

    `tallied(tally, group, handler, ...)` returns one; called with what the
    client library hands a consumer callback (its parameters are `P`), it
    reads the message id, attempt, stream and trace context into a
    `Received`, runs `handler(received)` inside `tally.processing`, settles
    the message per `acks` and returns the `Received` (its `.outcome` is what
    was reported):

    - the handler returns: `ok`;
    - it raises (logged, not re-raised, so one bad message does not stop the
      consumer) or calls `received.failed()`: `error`, left for redelivery;
      the exception's class is the record's error class (`classify`);
    - it calls `received.dead_letter()`, or fails on attempt `max_attempts`
      or later: `dead_letter`, the broker's dead-letter route takes it (with
      the last failure's class);
    - a delivery beyond `max_attempts` (consumers kept dying on it) is
      dead-lettered without running the handler: error class `poison`.

    `acks`: `"after"` (at least once, the default): ok -> ack, error ->
    redelivery, dead_letter -> the dead-letter route; the record is emitted
    before the ack, so a crash between the two is a redelivery, counted as a
    duplicate, which it is. `"before"` (at most once): acked before the
    handler runs, a failure is reported and never redelivered (and a
    dead_letter is only reported). `"manual"`: the handler settles; the
    adapter only reports.

    Each adapter module has mypy check that its consumer keeps this contract.
    """

    tally: Tally
    group: str
    stream: str | None
    acks: Acks
    max_attempts: int | None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...


def check_acks(acks: object) -> None:
    if acks not in _ACKS:
        raise ValueError(f"acks has value {acks!r}. Must be 'after', 'before' or 'manual'.")


def is_last(attempt: int, max_attempts: int | None) -> bool:
    """The one dead-letter rule: a failure on attempt >= max_attempts is final."""
    return max_attempts is not None and 0 < max_attempts <= attempt


# What a consumer does with one delivery, in order: "give_up" and "run" report
# it (without and with the handler); the others settle it with the broker.
Step = Literal["give_up", "run", "ack", "retry", "dead_letter"]
_SETTLE: dict[str, Step] = {"ok": "ack", "error": "retry", "dead_letter": "dead_letter"}


def steps(received: Received[B], acks: Acks, max_attempts: int | None) -> Iterator[Step]:
    """The steps for one delivery; read lazily, as the outcome is known after "run"."""
    if acks == "after" and is_last(received.attempt - 1, max_attempts):
        yield "give_up"  # delivered again past its last attempt: consumers died on it
        yield "dead_letter"
        return
    if acks == "before":
        yield "ack"
    yield "run"
    if acks == "after":
        yield _SETTLE[received.outcome]


@contextmanager
def handling(
    tally: Tally, group: str, received: Received[B], max_attempts: int | None
) -> Iterator[Received[B]]:
    """Report one delivery around the handler: ok when it returns, error when it
    raises (logged and swallowed, its exception classified) or fails,
    dead_letter when it dead-letters or fails its last attempt.
    `asyncio.CancelledError` is reported error and propagates."""
    with tally.processing(
        received.message_id,
        group=group,
        stream=received.stream,
        attempt=received.attempt,
        headers=received.headers,
    ) as delivery:
        received.delivery = delivery
        try:
            yield received
        except Exception as exc:
            log.exception(
                "handler failed on %s %s (attempt %d)",
                received.stream,
                received.message_id,
                received.attempt,
            )
            delivery.failed(classify(exc))
        if delivery.outcome == "error" and is_last(received.attempt, max_attempts):
            delivery.dead_letter()


H = TypeVar("H")


class Consuming(Generic[H]):
    """What every adapter's consumer holds (the `Consumer` attributes)."""

    def __init__(
        self,
        tally: Tally,
        group: str,
        handler: H,
        stream: str | None,
        acks: Acks,
        max_attempts: int | None,
        retry: RetryPolicy | None = None,
    ) -> None:
        check_acks(acks)
        self.tally = tally
        self.group = group
        self.handler = handler
        self.stream = stream
        self.acks = acks
        self.max_attempts = max_attempts
        # ValueError now, naming the field, for a configuration the collector refuses
        # (max_attempts 0 or less: no limit, as is_last reads it).
        limit = max_attempts if max_attempts is not None and max_attempts > 0 else None
        self.retry_config = RetryConfig.of(acks, limit, retry)
        self._announced: set[str] = set()  # streams announced: each delivery looks here
        if stream or tally.stream:
            self.announce(stream or tally.stream or "")

    def announce(self, stream: str) -> None:
        """Tell the collector this consumer's retry configuration for `stream` (once:
        the shipper sends it again by itself, and to a forked child's collector)."""
        if stream not in self._announced:
            self.tally.announce_config(stream, self.group, self.retry_config)
            self._announced.add(stream)


class Tallied(Consuming[Handler[R]]):
    """The `Consumer` of a synchronous client: the steps of each delivery, in one
    place; an adapter subclass reads its messages and implements `settle`."""

    def consume(self, received: R) -> R:
        """Report, run and settle one delivery; returns it with its outcome."""
        self.announce(received.stream)
        for step in steps(received, self.acks, self.max_attempts):
            if step == "run" or step == "give_up":
                with handling(self.tally, self.group, received, self.max_attempts):
                    if step == "run":
                        self.handler(received)
                    else:
                        received.dead_letter("poison")
            else:
                self.settle(received, step)
        return received

    def settle(self, received: R, step: Step) -> None:
        """Ack, retry (leave for redelivery) or dead-letter one message."""
        raise NotImplementedError


def stream_for(tally: Tally, destination: str, *given: str | None) -> str:
    """The first stream given, else the Tally's, else the destination."""
    return next((s for s in given if s), None) or tally.stream or destination


def new_message_id() -> str:
    return uuid.uuid4().hex


def body_digest(body: bytes) -> str:
    """The last-resort message id: `sha256:` and 32 hex digits of the body.

    Stable across redeliveries and consumers; identical bodies share an id,
    so only unique bodies are counted right. A producer without the adapter
    reports this id to match what the consumer falls back to."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:32]


def text_headers(pairs: Iterable[tuple[object, object]]) -> dict[str, str]:
    """String headers, bytes decoded as UTF-8; other values (and undecodable
    bytes) left out. The first of a repeated name wins."""
    out: dict[str, str] = {}
    for key, value in pairs:
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if name in out:
            continue
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, bytes | bytearray | memoryview):
            try:
                out[name] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out
