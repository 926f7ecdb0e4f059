"""How much of the collector's memory and time a request body may take.

Bodies are read whole before they are decoded, so their bytes are held:
past `max_inflight` bytes being read and processed at once, a new request is
refused with 429 and Retry-After (the shim retries); a body that does not
arrive within `read_timeout` seconds is refused with 408, so that slow or
stalled senders cannot hold memory for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import Request

from msgtally.ingest.intake.limits import DEFAULT_MAX_INFLIGHT, DEFAULT_READ_TIMEOUT
from msgtally.ingest.intake.problems import problem


class Intake:
    """The byte budget of one collector process (used from its event loop only)."""

    def __init__(
        self,
        max_body: int,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self.max_body = max_body
        self.max_inflight = max_inflight
        self.read_timeout = read_timeout
        self.inflight = 0

    def _reserve(self, n: int) -> None:
        if self.inflight + n > self.max_inflight:
            raise problem(
                429,
                None,
                f"busy: {self.inflight} bytes of requests in progress (limit {self.max_inflight})",
                headers={"Retry-After": "1"},
            )
        self.inflight += n

    @asynccontextmanager
    async def body(self, request: Request) -> AsyncIterator[bytes]:
        """The whole body, its bytes counted until the `with` block ends."""
        declared = request.headers.get("content-length", "")
        limit = self.max_body
        reserved = int(declared) if declared.isdigit() else 0
        if reserved > limit:
            raise problem(413, "body", f"larger than the limit of {limit} bytes ({declared})")
        self._reserve(reserved)
        try:
            chunks: list[bytes] = []
            size = 0
            try:
                async with asyncio.timeout(self.read_timeout):
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > limit:  # a chunked body has no content-length to refuse early
                            raise problem(413, "body", f"larger than the limit of {limit} bytes")
                        if size > reserved:
                            self._reserve(size - reserved)
                            reserved = size
                        chunks.append(chunk)
            except TimeoutError:
                raise problem(
                    408, "body", f"not received within {self.read_timeout:g} s ({size} bytes came)"
                ) from None
            yield b"".join(chunks)
        finally:
            self.inflight -= reserved

    @contextmanager
    def held(self) -> Iterator[Callable[[int], None]]:
        """`take(n)` counts n more bytes (a body as it is decompressed, a gRPC
        message) until the `with` block ends; past the budget it raises 429."""
        taken = 0

        def take(n: int) -> None:
            nonlocal taken
            self._reserve(n)
            taken += n

        try:
            yield take
        finally:
            self.inflight -= taken
