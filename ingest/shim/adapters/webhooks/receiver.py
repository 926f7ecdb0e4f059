"""Receiving webhooks: ASGI middleware and a FastAPI dependency that report
every request they see as a consume.

- `TallyMiddleware(app, tally=, group=, stream=None, ...)`: ASGI middleware for
  any ASGI app (FastAPI, Starlette, a bare ASGI callable).
- `TallyDependency(tally, group=, stream=None, ...)`: a FastAPI dependency
  that yields a `Received`.
- `Received`: the common one (`message_id`, `attempt`, `stream`, `headers`
  with the trace context, `.dead_letter()`, `.failed()`); `body` is None:
  the request's body is the app's to read.
- `DEFAULT_ID_HEADERS`; the attempt header is `webhooks.ATTEMPT_HEADER`
  (`msgtally-attempt`).

Any ASGI app::

    app.add_middleware(TallyMiddleware, tally=tally, group="billing")

A request is tracked when its method is in `methods` (POST) and `stream`
(a name, or a function of the path returning a name or None) gives a
stream. It is reported `consumed` when the app is done: ok for a 2xx
status, error for any other status or an exception (re-raised). The app
can override through `request.state.msgtally` (a `Received`):
`.dead_letter()`, or `.failed()`. The middleware only sees the status:
a handler that processed the message and still answered 500 is recorded
as error.

A FastAPI route::

    delivery = TallyDependency(tally, group="billing", stream="orders")

    @app.post("/hooks/orders")
    async def hook(d: Annotated[Received, Depends(delivery)]) -> None: ...

The dependency reports the handler's own result: ok when it returns
(whatever response it returns), error when it raises (HTTPException
included), dead_letter or error when it calls `d.dead_letter()` / `d.failed()`.
Its stream is `stream=`, else `tally.stream`, else the request path.

The message id comes from `msgtally-message-id`, else from the first of
`id_headers` present (default `Idempotency-Key`, then the Standard Webhooks
`webhook-id`; pass e.g. `("x-github-delivery",)` for GitHub). A header that
changes between retries, like most `X-Request-Id`s, makes every retry look
like a new message. A request with none of them is not reported (its
`Received` has an empty `message_id`), and is counted in
`msgtally_sdk_webhook_unidentified_total{stream, group}` of `registry`. The
attempt comes from the first of `attempt_headers` with a positive integer
(default `msgtally-attempt`), else 1. The trace context (`traceparent`)
links the CONSUMER span to the sender's PRODUCER span.

Both announce the retry configuration (msgtally.ingest.shim.announce) of
their stream and group: acks `after` (the answer follows the processing),
and what the sender does on a failure, which only the service knows: its
`max_attempts` (None: not known, no limit) and `retry` (backoff, jitter,
dead-letter target).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msgtally.ingest.shim.adapters import common
from msgtally.ingest.shim.adapters.webhooks import ATTEMPT_HEADER
from msgtally.ingest.shim.announce import RetryConfig, RetryPolicy
from msgtally.ingest.shim.classify import http_status_class
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally

__all__ = [
    "DEFAULT_ID_HEADERS",
    "Received",
    "TallyDependency",
    "TallyMiddleware",
]

DEFAULT_ID_HEADERS = ("idempotency-key", "webhook-id")
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


@dataclass(kw_only=True, eq=False)
class Received(common.Received[None]):
    """The request a receiver is handling; an empty `message_id` when untracked."""


class _Unidentified:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "msgtally_sdk_webhook_unidentified",
            "Webhook requests received without a message id (not reported).",
            ("stream", "group"),
            registry=registry,
        )


_unidentified: weakref.WeakKeyDictionary[CollectorRegistry, _Unidentified] = (
    weakref.WeakKeyDictionary()
)


def _unidentified_counter(registry: CollectorRegistry) -> Counter:
    found = _unidentified.get(registry)
    if found is None:
        found = _unidentified[registry] = _Unidentified(registry)
    return found.counter


class _Reader:
    """Reads message id, attempt and trace context from request headers."""

    def __init__(
        self,
        tally: Tally,
        group: str,
        id_headers: Sequence[str],
        attempt_headers: Sequence[str],
        registry: CollectorRegistry | None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.tally = tally
        self.group = group
        self.retry_config = RetryConfig.of("after", max_attempts, retry)
        self._announced: set[str] = set()  # streams announced: each request looks here
        self._id_names = [n.lower().encode("latin-1") for n in (MESSAGE_ID_HEADER, *id_headers)]
        self._attempt_names = [n.lower().encode("latin-1") for n in attempt_headers]
        self._unidentified = _unidentified_counter(registry or REGISTRY)

    def read(self, raw: Sequence[tuple[bytes, bytes]], stream: str) -> Received:
        """The request's message id ("" when it has none), attempt and trace context."""
        found: dict[bytes, bytes] = {}
        trace: dict[str, str] = {}
        for name, value in raw:
            key = name.lower()
            found.setdefault(key, value)
            text = key.decode("latin-1")
            if text in _TRACE_HEADERS:
                trace[text] = value.decode("latin-1")
        mid = next(
            (v.decode("latin-1").strip() for n in self._id_names if (v := found.get(n))), None
        )
        attempt = 1
        for n in self._attempt_names:
            value = found.get(n, b"").strip()
            if value.isdigit() and int(value) >= 1:
                attempt = int(value)
                break
        if not mid:
            self._unidentified.labels(stream, self.group).inc()
        return Received(
            message_id=mid or "", attempt=attempt, stream=stream, body=None, headers=trace
        )

    @contextmanager
    def reporting(self, received: Received) -> Iterator[Received]:
        """Report the request around the app, unless it has no id."""
        if received.stream not in self._announced:
            self.tally.announce_config(received.stream, self.group, self.retry_config)
            self._announced.add(received.stream)
        if not received.message_id:
            yield received
            return
        with self.tally.processing(
            received.message_id,
            group=self.group,
            stream=received.stream,
            attempt=received.attempt,
            headers=received.headers,
        ) as delivery:
            received.delivery = delivery
            yield received


StreamOf = str | Callable[[str], str | None] | None


class TallyMiddleware:
    """ASGI middleware reporting each tracked request as a consume; see the module doc."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tally: Tally,
        group: str,
        stream: StreamOf = None,
        methods: Collection[str] = ("POST",),
        id_headers: Sequence[str] = DEFAULT_ID_HEADERS,
        attempt_headers: Sequence[str] = (ATTEMPT_HEADER,),
        registry: CollectorRegistry | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.app = app
        self._stream = stream
        self._methods = frozenset(m.upper() for m in methods)
        self._reader = _Reader(
            tally, group, id_headers, attempt_headers, registry, max_attempts, retry
        )

    def _stream_of(self, path: str) -> str | None:
        if callable(self._stream):
            return self._stream(path)
        return self._stream or self._reader.tally.stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self._methods:
            await self.app(scope, receive, send)
            return
        stream = self._stream_of(scope["path"])
        if stream is None:
            await self.app(scope, receive, send)
            return
        reader = self._reader
        received = reader.read(scope["headers"], stream)
        scope.setdefault("state", {})["msgtally"] = received
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with reader.reporting(received):
            await self.app(scope, receive, send_status)
            if received.outcome == "ok" and not 200 <= status < 300:
                received.failed(http_status_class(status))


class TallyDependency:
    """FastAPI dependency (`Depends(TallyDependency(...))`) yielding a `Received`."""

    def __init__(
        self,
        tally: Tally,
        *,
        group: str,
        stream: str | None = None,
        id_headers: Sequence[str] = DEFAULT_ID_HEADERS,
        attempt_headers: Sequence[str] = (ATTEMPT_HEADER,),
        registry: CollectorRegistry | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.stream = stream
        self._reader = _Reader(
            tally, group, id_headers, attempt_headers, registry, max_attempts, retry
        )

    async def __call__(self, request: Request) -> AsyncIterator[Received]:
        reader = self._reader
        stream = common.stream_for(reader.tally, request.url.path, self.stream)
        with reader.reporting(reader.read(request.scope["headers"], stream)) as received:
            yield received
