"""Bearer-token authentication for the collector, as plain ASGI middleware.

With a token configured, every request but `/healthz` (and `/metrics` when
left open) needs `Authorization: Bearer <token>`; the token is compared in
constant time. A refusal is a 401 in the collector's one error shape.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from msgtally.ingest import problems


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str, open_paths: Collection[str]) -> None:
        self.app = app
        self.expected = b"Bearer " + token.encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        reason = "a bearer token is required" if not given else "the token is not valid"
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
