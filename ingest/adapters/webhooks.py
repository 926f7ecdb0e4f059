"""HTTP webhooks: a retrying httpx sender and an ASGI / FastAPI receiver.

Public API:

- `WebhookSender(tally, stream=None, client=None, max_attempts=5, ...)`,
  `.send(url, json=..., content=..., headers=..., message_id=None) -> WebhookResult`;
  `AsyncWebhookSender` is the same over an `httpx.AsyncClient` (`await .send(...)`).
- `TallyMiddleware(app, tally=, group=, stream=None, ...)`: ASGI middleware for
  any ASGI app (FastAPI, Starlette, a bare ASGI callable).
- `TallyDependency(tally, group=, stream=None, ...)`: a FastAPI dependency
  that yields a `WebhookDelivery`.
- `ATTEMPT_HEADER` (`msgtally-attempt`), `DEFAULT_ID_HEADERS`, `WebhookResult`,
  `WebhookDelivery`.

Sending::

    tally = Tally(stream="orders", collector_url="http://collector:8410", system="http")
    with WebhookSender(tally, max_attempts=5) as sender:
        result = sender.send("https://billing/hooks/orders", json=order)
        result.response.raise_for_status()

Every attempt carries the same `msgtally-message-id` (generated with uuid4
when not given), its attempt number in `msgtally-attempt` and the W3C
`traceparent` of its own PRODUCER span, and is reported `produced`: outcome
ok on a 2xx answer, error (indeterminate) on anything else, a timeout or a
transport error. Retried: transport errors (timeouts included), 5xx, 408,
425 and 429, with exponential backoff and jitter (a numeric `Retry-After`
is honoured, capped at `max_backoff`). Other answers are final. `send`
returns the last response; when the last attempt ended in a transport error
that error is raised, as httpx would (its notes name the message id).

Receiving, any ASGI app::

    app.add_middleware(TallyMiddleware, tally=tally, group="billing")

A request is tracked when its method is in `methods` (POST) and `stream`
(a name, or a function of the path returning a name or None) gives a
stream. It is reported `consumed` when the app is done: ok for a 2xx
status, error for any other status or an exception (re-raised). The app
can override through `request.state.msgtally` (a `WebhookDelivery`):
`.dead_letter()`, or `.failed()`. The middleware only sees the status:
a handler that processed the message and still answered 500 is recorded
as error.

Receiving, a FastAPI route::

    delivery = TallyDependency(tally, group="billing", stream="orders")

    @app.post("/hooks/orders")
    async def hook(d: Annotated[WebhookDelivery, Depends(delivery)]) -> None: ...

The dependency reports the handler's own result: ok when it returns
(whatever response it returns), error when it raises (HTTPException
included), dead_letter or error when it calls `d.dead_letter()` / `d.failed()`.

The message id comes from `msgtally-message-id`, else from the first of
`id_headers` present (default `Idempotency-Key`, then the Standard Webhooks
`webhook-id`; pass e.g. `("x-github-delivery",)` for GitHub). A header that
changes between retries, like most `X-Request-Id`s, makes every retry look
like a new message. A request with none of them is not reported, and is
counted in `msgtally_sdk_webhook_unidentified_total{stream, group}` of
`registry`. The attempt comes from the first of `attempt_headers` with a
positive integer (default `msgtally-attempt`), else 1. The trace context
(`traceparent`) links the CONSUMER span to the sender's PRODUCER span.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..sdk import MESSAGE_ID_HEADER, Delivery, Tally

__all__ = [
    "ATTEMPT_HEADER",
    "DEFAULT_ID_HEADERS",
    "AsyncWebhookSender",
    "TallyDependency",
    "TallyMiddleware",
    "WebhookDelivery",
    "WebhookResult",
    "WebhookSender",
]

ATTEMPT_HEADER = "msgtally-attempt"
DEFAULT_ID_HEADERS = ("idempotency-key", "webhook-id")
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_RETRY_STATUS = frozenset({408, 425, 429})


# -- sending -------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookResult:
    """What a send came to: the message id, attempts made, the last response."""

    message_id: str
    attempts: int
    response: httpx.Response

    @property
    def ok(self) -> bool:
        return self.response.is_success


class _NotAccepted(Exception):
    """Raised inside `Tally.sending` so a non-2xx answer is reported as error."""


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUS


class _SenderBase:
    def __init__(
        self,
        tally: Tally,
        *,
        stream: str | None,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts has value {max_attempts!r}. Must be >= 1.")
        self.tally = tally
        self.stream = stream
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff

    def _headers(
        self, given: Mapping[str, str] | None, traced: Mapping[str, str], attempt: int
    ) -> dict[str, str]:
        out = dict(given or {})
        out.update(traced)
        out[ATTEMPT_HEADER] = str(attempt)
        return out

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after", "")
            if after.isdigit():
                return min(float(after), self.max_backoff)
        cap = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)  # equal jitter: spread, yet back off


class WebhookSender(_SenderBase):
    """Sends webhooks with retries over an `httpx.Client`, reporting every attempt."""

    def __init__(
        self,
        tally: Tally,
        *,
        stream: str | None = None,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(
            tally,
            stream=stream,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self._own = client is None
        self.client = client if client is not None else httpx.Client(timeout=timeout)

    def send(
        self,
        url: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        method: str = "POST",
        stream: str | None = None,
    ) -> WebhookResult:
        """Send until a 2xx, a final answer or `max_attempts`; see the module doc."""
        mid = message_id or uuid.uuid4().hex
        s = stream or self.stream
        attempt = 1
        while True:
            response: httpx.Response | None = None
            try:
                with self.tally.sending(mid, stream=s, attempt=attempt) as traced:
                    response = self.client.request(
                        method,
                        url,
                        json=json,
                        content=content,
                        headers=self._headers(headers, traced, attempt),
                    )
                    if not response.is_success:
                        raise _NotAccepted
                return WebhookResult(mid, attempt, response)
            except _NotAccepted:
                assert response is not None
                if attempt >= self.max_attempts or not _retryable(response.status_code):
                    return WebhookResult(mid, attempt, response)
            except httpx.TransportError as exc:
                if attempt >= self.max_attempts:
                    exc.add_note(f"msgtally: message id {mid}, {attempt} attempts")
                    raise
            time.sleep(self._delay(attempt, response))
            attempt += 1

    def close(self) -> None:
        """Close the client if the sender created it."""
        if self._own:
            self.client.close()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWebhookSender(_SenderBase):
    """`WebhookSender` over an `httpx.AsyncClient`."""

    def __init__(
        self,
        tally: Tally,
        *,
        stream: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(
            tally,
            stream=stream,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self._own = client is None
        self.client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def send(
        self,
        url: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        method: str = "POST",
        stream: str | None = None,
    ) -> WebhookResult:
        """Send until a 2xx, a final answer or `max_attempts`; see the module doc."""
        mid = message_id or uuid.uuid4().hex
        s = stream or self.stream
        attempt = 1
        while True:
            response: httpx.Response | None = None
            try:
                with self.tally.sending(mid, stream=s, attempt=attempt) as traced:
                    response = await self.client.request(
                        method,
                        url,
                        json=json,
                        content=content,
                        headers=self._headers(headers, traced, attempt),
                    )
                    if not response.is_success:
                        raise _NotAccepted
                return WebhookResult(mid, attempt, response)
            except _NotAccepted:
                assert response is not None
                if attempt >= self.max_attempts or not _retryable(response.status_code):
                    return WebhookResult(mid, attempt, response)
            except httpx.TransportError as exc:
                if attempt >= self.max_attempts:
                    exc.add_note(f"msgtally: message id {mid}, {attempt} attempts")
                    raise
            await asyncio.sleep(self._delay(attempt, response))
            attempt += 1

    async def aclose(self) -> None:
        """Close the client if the sender created it."""
        if self._own:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncWebhookSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- receiving -----------------------------------------------------------------


class WebhookDelivery:
    """The message a receiver is handling; `message_id` is None when untracked."""

    __slots__ = ("_delivery", "attempt", "message_id", "stream")

    def __init__(
        self,
        message_id: str | None,
        attempt: int,
        stream: str | None,
        delivery: Delivery | None = None,
    ) -> None:
        self.message_id = message_id
        self.attempt = attempt
        self.stream = stream
        self._delivery = delivery

    @property
    def outcome(self) -> str:
        return self._delivery.outcome if self._delivery is not None else "ok"

    def dead_letter(self) -> None:
        """Record the message as dead-lettered (parked for good)."""
        if self._delivery is not None:
            self._delivery.dead_letter()

    def failed(self) -> None:
        """Record processing as failed without raising."""
        if self._delivery is not None:
            self._delivery.failed()


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
    ) -> None:
        self.tally = tally
        self.group = group
        self._id_names = [n.lower().encode("latin-1") for n in (MESSAGE_ID_HEADER, *id_headers)]
        self._attempt_names = [n.lower().encode("latin-1") for n in attempt_headers]
        self._unidentified = _unidentified_counter(registry or REGISTRY)

    def read(self, raw: Sequence[tuple[bytes, bytes]]) -> tuple[str | None, int, dict[str, str]]:
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
        return mid or None, attempt, trace

    def unidentified(self, stream: str | None) -> None:
        self._unidentified.labels(stream or "", self.group).inc()


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
    ) -> None:
        self.app = app
        self._stream = stream
        self._methods = frozenset(m.upper() for m in methods)
        self._reader = _Reader(tally, group, id_headers, attempt_headers, registry)

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
        mid, attempt, trace = reader.read(scope["headers"])
        state = scope.setdefault("state", {})
        if mid is None:
            reader.unidentified(stream)
            state["msgtally"] = WebhookDelivery(None, attempt, stream)
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with reader.tally.processing(
            mid, group=reader.group, stream=stream, attempt=attempt, headers=trace
        ) as delivery:
            state["msgtally"] = WebhookDelivery(mid, attempt, stream, delivery)
            await self.app(scope, receive, send_status)
            if delivery.outcome == "ok" and not 200 <= status < 300:
                delivery.failed()


class TallyDependency:
    """FastAPI dependency (`Depends(TallyDependency(...))`) yielding a `WebhookDelivery`."""

    def __init__(
        self,
        tally: Tally,
        *,
        group: str,
        stream: str | None = None,
        id_headers: Sequence[str] = DEFAULT_ID_HEADERS,
        attempt_headers: Sequence[str] = (ATTEMPT_HEADER,),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.stream = stream
        self._reader = _Reader(tally, group, id_headers, attempt_headers, registry)

    async def __call__(self, request: Request) -> AsyncIterator[WebhookDelivery]:
        reader = self._reader
        stream = self.stream or reader.tally.stream
        mid, attempt, trace = reader.read(request.scope["headers"])
        if mid is None:
            reader.unidentified(stream)
            yield WebhookDelivery(None, attempt, stream)
            return
        with reader.tally.processing(
            mid, group=reader.group, stream=stream, attempt=attempt, headers=trace
        ) as delivery:
            yield WebhookDelivery(mid, attempt, stream, delivery)
