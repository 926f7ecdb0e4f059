"""The shim services add: count, trace and ship every produced and consumed id.

    tally = Tally(stream="orders", collector_url="http://collector:8410")
    headers = tally.produced(order.id)           # put these in the message
    ...
    with tally.processing(msg.id, group="billing", attempt=n, headers=msg.headers):
        handle(msg)                              # ok, or error if it raises

Every call is cheap (a pre-bound counter, an optional span, a deque append)
and never raises into the host: bad arguments are counted as dropped records
and logged, and the collector being down only fills a bounded buffer.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import time
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Status, StatusCode, TracerProvider
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from msgtally.ingest.shim.announce import RetryConfig, RetryPolicy
from msgtally.ingest.shim.classify import classify
from msgtally.ingest.shim.shipper import DropKey, Shipper
from msgtally.ingest.shim.tracing import MESSAGE_ID, MessagingTracer, span_ids
from msgtally.record import (
    CONSUME_OUTCOMES,
    ERROR_CLASSES,
    MAX_ATTEMPT,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_TS,
    PRODUCE_OUTCOMES,
)

log = logging.getLogger(__name__)

MESSAGE_ID_HEADER = "msgtally-message-id"
# The stream (or group) under which a record with an unusable name is counted dropped.
INVALID_NAME = "(invalid)"
DEFAULT_COLLECTOR = "http://127.0.0.1:8410"
_ID_TO_COME = "(to come)"  # stands for an id that `sending` learns at the end


class _Metrics:
    """The msgtally_sdk_* counters of one registry (created once per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.produced = Counter(
            "msgtally_sdk_produced",
            "Messages reported produced, by outcome.",
            ("stream", "outcome"),
            registry=registry,
        )
        self.consumed = Counter(
            "msgtally_sdk_consumed",
            "Messages reported consumed, by group and outcome.",
            ("stream", "group", "outcome"),
            registry=registry,
        )
        self.shipped = Counter(
            "msgtally_sdk_records_shipped",
            "Records the collector accepted.",
            registry=registry,
        )
        self.dropped = Counter(
            "msgtally_sdk_records_dropped",
            "Records dropped before reaching the collector (measurement loss).",
            ("stream", "kind", "group"),
            registry=registry,
        )


_metrics: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    found = _metrics.get(registry)
    if found is None:
        found = _metrics[registry] = _Metrics(registry)
    return found


# A name given to a service's shims heads each instance's id (host, pid, random).
MAX_PRODUCER_NAME = 128


# A pre-bound counter child, a sequence's key, and its numbering.
_Lane = tuple[Any, tuple[str, str, str], Iterator[int]]


def _instance_id(name: str | None) -> str:
    """Unique per process: two instances' sequences must never mix (a restart,
    a replica, a forked child number from 1 again)."""
    unique = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return unique if name is None else f"{name}/{unique}"


class Delivery:
    """What a consumer handler can say about the message it is processing.

    `error`: the failure's class (msgtally.record.ERROR_CLASSES), None when not
    classified; an exception out of the handler is classified
    (msgtally.ingest.shim.classify)."""

    __slots__ = ("error", "outcome")

    def __init__(self) -> None:
        self.outcome = "ok"
        self.error: str | None = None

    def dead_letter(self, error: str | None = None) -> None:
        """Mark the message as sent to the dead-letter queue (`error`: why, when known;
        a class given before, by a failure, stays unless this one says otherwise)."""
        self.outcome = "dead_letter"
        self.error = error or self.error

    def failed(self, error: str | None = None) -> None:
        """Mark processing as failed without raising (it will be redelivered);
        `error`: the failure's class, when known."""
        self.outcome = "error"
        self.error = error or self.error


class Sending:
    """What a publisher can say about the message it is sending."""

    __slots__ = ("error", "headers", "message_id", "outcome")

    def __init__(self, message_id: str | None) -> None:
        self.headers: dict[str, str] = {}
        self.message_id = message_id
        self.outcome = "ok"
        self.error: str | None = None

    def failed(self, error: str | None = None) -> None:
        """The send was not confirmed (without raising): indeterminate; `error`:
        the failure's class (msgtally.record.ERROR_CLASSES), when known."""
        self.outcome = "error"
        self.error = error or self.error


class Tally:
    """Producer and consumer shim for one service; thread-safe, fork-safe.

    Every record carries the shim instance (`producer`: `<producer>/` when
    named, then host, pid and a random part) and its number in the instance's
    sequence for its (stream, kind, group), from 1.
    """

    def __init__(
        self,
        stream: str | None = None,
        collector_url: str = DEFAULT_COLLECTOR,
        *,
        system: str = "generic",
        producer: str | None = None,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        tracing: bool = True,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        timeout: float = 5.0,
        token: str | None = None,
    ) -> None:
        if producer is not None and not _text_ok(producer, MAX_PRODUCER_NAME):
            raise ValueError(
                f"producer {producer!r} is not a non-empty UTF-8 string of at most "
                f"{MAX_PRODUCER_NAME} characters without NUL"
            )
        self.stream = stream
        self._metrics = _metrics_for(registry or REGISTRY)
        self._tracer = MessagingTracer(tracer_provider, system) if tracing else None
        self._named_producer = producer
        self._new_identity()
        self.shipper = Shipper(
            collector_url,
            source=self.instance,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffer=max_buffer,
            timeout=timeout,
            on_drop=self._count_drop,
            on_shipped=self._metrics.shipped.inc,
            marks=self._marks,
            token=token,
        )
        _tallies.add(self)

    def _new_identity(self) -> None:
        # Record ids are instance:n, unique without a uuid per call (cheaper).
        self.instance = _instance_id(self._named_producer)
        self._record_n = itertools.count(1)
        # Every record is numbered from 1 per (stream, kind, group) when it is
        # made: one the shim drops, or dies with, leaves a gap the collector
        # finds (the last number given, sent as a mark, shows the tail).
        self._seqs: dict[tuple[str, str, str], Iterator[int]] = {}
        self._last: dict[tuple[str, str, str], int] = {}
        # Per (stream, group, outcome), group "" for produces: the pre-bound
        # counter and the record sequence, found in one lookup per message.
        self._lanes: dict[tuple[str, str, str], _Lane] = {}

    def _new_lane(self, s: str, kind: str, group: str, outcome: str) -> _Lane:
        if kind == "produce":
            child = self._metrics.produced.labels(s, outcome)
        else:
            child = self._metrics.consumed.labels(s, group, outcome)
        key = (s, kind, group)
        # setdefault: two threads get one sequence
        return child, key, self._seqs.setdefault(key, itertools.count(1))

    def _number(self, lane: _Lane) -> int:
        n = next(lane[2])  # atomic: no two records share a number
        # Racing threads may leave a lower number here: a mark then says less
        # than was given, never more.
        self._last[lane[1]] = n
        return n

    def _marks(self) -> dict[tuple[str, str, str], int]:
        return self._last.copy()  # one C call: safe beside the callers' threads

    def _count_drop(self, key: DropKey, n: int) -> None:
        self._metrics.dropped.labels(*key).inc(n)

    def _reject(self, stream: object, kind: str, group: object, why: str) -> None:
        log.warning("msgtally: %s record not sent: %s", kind, why)
        # Names that cannot be sent are reported under a placeholder, so that
        # the collector still learns that a record was dropped.
        s = stream if _text_ok(stream) else INVALID_NAME
        g = "" if kind == "produce" else group if _text_ok(group) else INVALID_NAME
        self.shipper.count_drop((s, kind, g))  # type: ignore[arg-type]

    def _problem(
        self, kind: str, s: object, message_id: object, group: object, outcome: object,
        ts: object, error: object = None,
    ) -> str | None:
        """Why a record cannot be sent, or None. Checked here, because one bad
        record would make the collector refuse its whole batch. (A bad attempt
        number is not a reason: the record is kept with attempt 1.)"""
        if not _text_ok(s):
            return f"stream {s!r} is not {_TEXT}"
        if not _text_ok(message_id, MAX_ID_LENGTH):
            return f"message id {message_id!r} is not {_TEXT}"
        if ts is not None and not _ts_ok(ts):
            return f"ts {ts!r} is not a unix time in seconds (0 to {MAX_TS:g})"
        if kind == "consume" and not _text_ok(group):
            return f"group {group!r} is not {_TEXT}"
        if outcome != "ok":
            allowed = PRODUCE_OUTCOMES if kind == "produce" else CONSUME_OUTCOMES
            if outcome not in allowed:
                return f"outcome {outcome!r} is not {', '.join(allowed[:-1])} or {allowed[-1]}"
        if error is not None:
            if error not in ERROR_CLASSES:
                return f"error {error!r} is not one of {', '.join(ERROR_CLASSES)}"
            if outcome == "ok":
                return f"error {error!r} on an ok record"
        return None

    def _emit(
        self,
        kind: str,
        s: str,
        group: str,
        message_id: str,
        attempt: int,
        outcome: str,
        ids: tuple[str | None, str | None],
        ts: float | None,
        error: str | None = None,
    ) -> None:
        """Count the record and queue it, a tuple in the record's field order."""
        lane = self._lanes.get((s, group, outcome))
        if lane is None:
            lane = self._lanes[(s, group, outcome)] = self._new_lane(s, kind, group, outcome)
        lane[0].inc()
        self.shipper.put(
            (
                s,
                kind,
                message_id,
                time.time() if ts is None else float(ts),
                group,
                _attempt(attempt),
                outcome,
                self.instance,
                self._number(lane),
                ids[0],
                ids[1],
                f"{self.instance}:{next(self._record_n)}",
                None if outcome == "ok" else error,
            )
        )

    # -- producer side ----------------------------------------------------

    def produced(
        self,
        message_id: str,
        *,
        stream: str | None = None,
        attempt: int = 1,
        outcome: str = "ok",
        headers: MutableMapping[str, str] | None = None,
        ts: float | None = None,
        error: str | None = None,
    ) -> MutableMapping[str, str]:
        """Report a send (`ok`: the broker acknowledged; `error`: indeterminate,
        with the failure's class in `error` when known).

        Returns the headers to send with the message (message id and W3C trace
        context), `headers` itself when given.
        """
        out = headers if isinstance(headers, MutableMapping) else {}
        s = stream or self.stream
        why = self._problem("produce", s, message_id, "", outcome, ts, error)
        if why is not None:
            self._reject(s, "produce", "", why)
            return out
        assert isinstance(s, str)
        out[MESSAGE_ID_HEADER] = message_id
        ids: tuple[str | None, str | None] = (None, None)
        if self._tracer is not None:
            span, ids = self._tracer.send(s, message_id, out)
            _end(span, outcome)
        self._emit("produce", s, "", message_id, attempt, outcome, ids, ts, error)
        return out

    @contextmanager
    def sending(
        self, message_id: str | None, *, stream: str | None = None, attempt: int = 1
    ) -> Iterator[Sending]:
        """Wrap a publish: yields a `Sending` whose `headers` go with the message.
        `ok` when the block ends; `error` (indeterminate) when it raises
        (re-raised, its exception classified) or calls `sending.failed()`.

        `message_id=None`: the id is known only once the broker answered (a
        Kafka offset); set `sending.message_id` before the block ends. The
        headers then carry the trace context only.
        """
        s = stream or self.stream
        handle = Sending(message_id)
        # An id still to come is checked when the block ends.
        known = _ID_TO_COME if message_id is None else message_id
        why = self._problem("produce", s, known, "", "ok", None)
        span = None
        ids: tuple[str | None, str | None] = (None, None)
        if why is None:
            assert isinstance(s, str)
            if message_id is not None:
                handle.headers[MESSAGE_ID_HEADER] = message_id
            if self._tracer is not None:
                span, ids = self._tracer.send(s, message_id or "", handle.headers)
        try:
            yield handle
        except BaseException as exc:
            handle.outcome = "error"
            handle.error = handle.error or classify(exc)
            raise
        finally:
            mid = handle.message_id
            if why is None and message_id is None:
                why = self._problem("produce", s, mid, "", "ok", None)
            if why is None and handle.outcome != "ok":
                why = self._problem("produce", s, mid, "", handle.outcome, None, handle.error)
            if why is not None:
                self._reject(s, "produce", "", why)
            else:
                assert isinstance(s, str) and isinstance(mid, str)
                if span is not None:
                    if message_id is None:
                        span.set_attribute(MESSAGE_ID, mid)
                    _end(span, handle.outcome)
                self._emit("produce", s, "", mid, attempt, handle.outcome, ids, None, handle.error)

    # -- consumer side ----------------------------------------------------

    def consumed(
        self,
        message_id: str,
        *,
        group: str,
        stream: str | None = None,
        attempt: int = 1,
        outcome: str = "ok",
        headers: Mapping[str, Any] | None = None,
        ts: float | None = None,
        error: str | None = None,
    ) -> None:
        """Report a delivery and its processing result: ok, error or dead_letter
        (with the failure's class in `error` when known)."""
        s = stream or self.stream
        why = self._problem("consume", s, message_id, group, outcome, ts, error)
        if why is not None:
            self._reject(s, "consume", group, why)
            return
        assert isinstance(s, str)
        ids: tuple[str | None, str | None] = (None, None)
        if self._tracer is not None:
            span = self._tracer.process(s, message_id, group, _attempt(attempt), _mapping(headers))
            ids = span_ids(span)
            _end(span, outcome)
        self._emit("consume", s, group, message_id, attempt, outcome, ids, ts, error)

    @contextmanager
    def processing(
        self,
        message_id: str,
        *,
        group: str,
        stream: str | None = None,
        attempt: int = 1,
        headers: Mapping[str, Any] | None = None,
    ) -> Iterator[Delivery]:
        """Wrap a handler: `ok` when it returns, `error` when it raises (re-raised,
        its exception classified), `dead_letter` when it calls `delivery.dead_letter()`."""
        delivery = Delivery()
        s = stream or self.stream
        why = self._problem("consume", s, message_id, group, "ok", None)
        if why is not None:
            self._reject(s, "consume", group, why)
        span = None
        if why is None and self._tracer is not None:
            assert isinstance(s, str)
            span = self._tracer.process(s, message_id, group, _attempt(attempt), _mapping(headers))
        try:
            yield delivery
        except BaseException as exc:
            delivery.outcome = "error"
            delivery.error = delivery.error or classify(exc)
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            if why is None and delivery.outcome != "ok":
                why = self._problem("consume", s, message_id, group, delivery.outcome, None,
                                    delivery.error)  # fmt: skip
                if why is not None:
                    self._reject(s, "consume", group, why)
            if why is None:
                assert isinstance(s, str)
                ids: tuple[str | None, str | None] = (None, None)
                if span is not None:
                    ids = span_ids(span)
                    _end(span, delivery.outcome)
                self._emit(
                    "consume", s, group, message_id, attempt, delivery.outcome, ids, None,
                    delivery.error,
                )  # fmt: skip

    # -- retry configuration ------------------------------------------------

    def announce(
        self,
        group: str,
        *,
        stream: str | None = None,
        acks: str = "after",
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> RetryConfig:
        """Tell the collector how this instance consumes `stream` as `group`: acks
        mode (`after`, `before` or `manual` processing), max attempts (None: no
        limit) and `retry` (backoff, jitter, dead-letter target). Sent at once
        when new or changed, and again now and then with the records; the
        adapters announce for their consumers. ValueError for a configuration
        the collector would refuse (naming the field)."""
        s = stream or self.stream
        if not _text_ok(s):
            raise ValueError(f"stream {s!r} is not {_TEXT}")
        if not _text_ok(group):
            raise ValueError(f"group {group!r} is not {_TEXT}")
        assert isinstance(s, str)
        config = RetryConfig.of(acks, max_attempts, retry)
        self.shipper.announce(s, group, config)
        return config

    def announce_config(self, stream: str, group: str, config: RetryConfig) -> None:
        """The per-message path of `announce` for a checked configuration and
        names (an adapter's): a few checks and a dict lookup. Names no record may
        carry are left out (their records are refused too)."""
        if _text_ok(stream) and _text_ok(group):
            self.shipper.announce(stream, group, config)

    # -- lifecycle ----------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record so far reached the collector (or was dropped)."""
        return self.shipper.flush(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Flush and stop shipping. Also runs at interpreter exit."""
        return self.shipper.close(timeout)

    def __enter__(self) -> Tally:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork(self) -> None:
        self._new_identity()
        self.shipper.source = self.instance


def _end(span: Any, outcome: str) -> None:
    if outcome != "ok":
        span.set_status(Status(StatusCode.ERROR))
    span.end()


# The record's bounds (msgtally.record), checked here because a record the
# collector would refuse must never enter a batch.
_TEXT = f"a non-empty UTF-8 string of at most {MAX_TEXT_LENGTH} characters without NUL"


def _text_ok(value: object, limit: int = MAX_TEXT_LENGTH) -> bool:
    """Non-empty, at most `limit` characters, encodable as UTF-8 (a lone
    surrogate is not), no NUL character (no store holds it in text)."""
    if type(value) is not str or not 0 < len(value) <= limit or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ts_ok(ts: object) -> bool:
    # Compared, never converted: float() of a huge int raises OverflowError.
    return type(ts) in (int, float) and 0 <= ts <= MAX_TS  # type: ignore[operator]


def _attempt(attempt: object) -> int:
    """The attempt, or 1 when it is not one the contract allows."""
    return attempt if type(attempt) is int and 1 <= attempt <= MAX_ATTEMPT else 1


def _mapping(headers: object) -> Mapping[str, Any] | None:
    return headers if isinstance(headers, Mapping) else None


_tallies: weakref.WeakSet[Tally] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for tally in list(_tallies):
        tally._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
