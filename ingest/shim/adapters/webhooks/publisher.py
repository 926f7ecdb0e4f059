"""Sending webhooks: a retrying httpx publisher that reports every attempt.

- `Publisher(tally, *, stream=None, client=None, timeout=10.0, max_attempts=5,
  backoff=0.5, max_backoff=30.0)`, `.publish(url, *, json=None, content=None,
  headers=None, message_id=None, method="POST", stream=None) -> WebhookResult`
  over an `httpx.Client`; `AsyncPublisher` is the same over an
  `httpx.AsyncClient` (`await .publish(...)`). One retry loop serves both.
- `WebhookResult(message_id, attempts, response)`, `.ok`.

    tally = Tally(stream="orders", collector_url="http://collector:8410", system="http")
    with Publisher(tally, max_attempts=5) as publisher:
        result = publisher.publish("https://billing/hooks/orders", json=order)
        result.response.raise_for_status()

Every attempt carries the same `msgtally-message-id` (uuid4 hex when not
given), its attempt number in `msgtally-attempt` and the W3C `traceparent`
of its own PRODUCER span, and is reported `produced`: outcome ok on a 2xx
answer, error (indeterminate) on anything else, a timeout or a transport
error. Retried: transport errors (timeouts included), 5xx, 408, 425 and 429,
with exponential backoff and jitter (a numeric `Retry-After` is honoured,
capped at `max_backoff`). Other answers are final. `publish` returns the
last response; when the last attempt ended in a transport error that error
is raised, as httpx would (its notes name the message id).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, Unpack

import httpx

from msgtally.ingest.shim.adapters import common
from msgtally.ingest.shim.adapters.webhooks import ATTEMPT_HEADER
from msgtally.ingest.shim.classify import classify, http_status_class
from msgtally.ingest.shim.tally import Tally

__all__ = ["AsyncPublisher", "Options", "Publisher", "WebhookResult"]

_RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class WebhookResult:
    """What a publish came to: the message id, attempts made, the last response."""

    message_id: str
    attempts: int
    response: httpx.Response

    @property
    def ok(self) -> bool:
        return self.response.is_success


class Options(TypedDict, total=False):
    """The keywords of `publish`, besides the url."""

    json: Any
    content: bytes | str | None
    headers: Mapping[str, str] | None
    message_id: str | None
    method: str  # POST
    stream: str | None


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUS


C = TypeVar("C", httpx.Client, httpx.AsyncClient)
T = TypeVar("T")
Send = Callable[[httpx.Request], Awaitable[httpx.Response]]
Sleep = Callable[[float], Awaitable[None]]


class _Publishing(Generic[C]):
    """The retry loop of both publishers, written once as a coroutine over `send`
    and `sleep`: the async publisher awaits it, the sync one runs it with
    calls that never suspend."""

    def __init__(
        self,
        tally: Tally,
        *,
        stream: str | None = None,
        client: C | None = None,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts has value {max_attempts!r}. Must be >= 1.")
        self.tally = tally
        self.stream = stream
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._own = client is None
        self.client: C = client if client is not None else self._new_client(timeout)

    def _new_client(self, timeout: float) -> C:
        raise NotImplementedError

    async def _publish(self, send: Send, sleep: Sleep, url: str, request: Options) -> WebhookResult:
        mid = request.get("message_id") or common.new_message_id()
        s = request.get("stream") or self.stream
        for attempt in itertools.count(1):
            answer: httpx.Response | httpx.TransportError
            with self.tally.sending(mid, stream=s, attempt=attempt) as sending:
                headers = request.get("headers") or {}
                sent = {**headers, **sending.headers, ATTEMPT_HEADER: str(attempt)}
                built = self.client.build_request(
                    request.get("method", "POST"),
                    url,
                    json=request.get("json"),
                    content=request.get("content"),
                    headers=sent,
                )
                try:
                    answer = await send(built)
                except httpx.TransportError as exc:
                    answer = exc
                if isinstance(answer, httpx.TransportError):
                    sending.failed(classify(answer))
                elif not answer.is_success:
                    sending.failed(http_status_class(answer.status_code))
            if isinstance(answer, httpx.TransportError):
                if attempt >= self.max_attempts:
                    answer.add_note(f"msgtally: message id {mid}, {attempt} attempts")
                    raise answer
                await sleep(self._delay(attempt, None))
                continue
            if answer.is_success or not _retryable(answer.status_code):
                return WebhookResult(mid, attempt, answer)
            if attempt >= self.max_attempts:
                return WebhookResult(mid, attempt, answer)
            await sleep(self._delay(attempt, answer))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after", "")
            if after.isdigit():
                return min(float(after), self.max_backoff)
        cap = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)  # equal jitter: spread, yet back off


class Publisher(_Publishing[httpx.Client]):
    """Publishes webhooks with retries over an `httpx.Client`, reporting every attempt."""

    def _new_client(self, timeout: float) -> httpx.Client:
        return httpx.Client(timeout=timeout)

    def publish(self, url: str, **request: Unpack[Options]) -> WebhookResult:
        """Send until a 2xx, a final answer or `max_attempts`; see the module doc."""
        return _run(self._publish(_at_once(self.client.send), _at_once(time.sleep), url, request))

    def close(self) -> None:
        """Close the client if the publisher created it."""
        if self._own:
            self.client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher(_Publishing[httpx.AsyncClient]):
    """`Publisher` over an `httpx.AsyncClient`."""

    def _new_client(self, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout)

    async def publish(self, url: str, **request: Unpack[Options]) -> WebhookResult:
        """Send until a 2xx, a final answer or `max_attempts`; see the module doc."""
        return await self._publish(self.client.send, asyncio.sleep, url, request)

    async def aclose(self) -> None:
        """Close the client if the publisher created it."""
        if self._own:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _at_once(call: Callable[[Any], T]) -> Callable[[Any], Awaitable[T]]:
    """A blocking call as an awaitable that never suspends."""

    async def awaited(arg: Any) -> T:
        return call(arg)

    return awaited


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a blocking publish suspended")
