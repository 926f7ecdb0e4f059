"""Bearer-token authentication for the collector, as plain ASGI middleware.

With a token configured, every request but `/healthz` (and `/metrics` when
left open) needs `Authorization: Bearer <token>`; the token is compared in
constant time. A refusal is a 401 in the collector's one error shape. OTLP/gRPC
checks the same token in its `authorization` metadata (`bearer_check`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from msgtally.ingest.intake import problems


def bearer_check(token: str) -> Callable[[bytes], str | None]:
    """A check of an Authorization value (HTTP header, gRPC metadata): None
    when it carries the token, else why not."""
    expected = b"Bearer " + token.encode()

    def check(given: bytes) -> str | None:
        if hmac.compare_digest(given, expected):
            return None
        return "a bearer token is required" if not given else "the token is not valid"

    return check


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str, open_paths: Collection[str]) -> None:
        self.app = app
        self.check = bearer_check(token)
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        reason = self.check(given)
        if reason is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(problems.body("authorization", reason)).encode()
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})
