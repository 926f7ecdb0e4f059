"""Bearer-token authentication for the collector, as plain ASGI middleware.

With tokens configured, every request but `/healthz` (and `/metrics` when
left open) needs `Authorization: Bearer <token>` with one of them; each is
compared in constant time. A refusal is a 401 in the collector's one error
shape. OTLP/gRPC checks the same tokens in its `authorization` metadata.

The tokens come from `MSGTALLY_TOKEN` (one) or a token file (`TokenFile`):
one token a line, blank lines and `#` comments ignored. The collector reads
the file again on SIGHUP and when it changes (its mtime, size or inode,
looked at every few seconds), so a rotation needs no restart: add the new
token, move the shims to it, remove the old one (docs/operations.md). A file
that becomes unreadable or empty keeps the tokens in force, and says so at
ERROR.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("msgtally.auth")

POLL_INTERVAL = 2.0  # seconds between looks at the token file


class TokenError(ValueError):
    """A token file that cannot be used: the message names the file and why."""


def parse_tokens(text: str, source: str) -> tuple[str, ...]:
    """The tokens of a token file's text: one a line; blank lines and `#`
    comments ignored. A token is printable ASCII without spaces (it travels
    in an HTTP header)."""
    tokens: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not all("!" <= c <= "~" for c in token):
            raise TokenError(
                f"{source}, line {n}: a token is printable ASCII without spaces "
                "(one token a line)"
            )
        tokens.append(token)
    if not tokens:
        raise TokenError(f"{source} holds no token (one a line; # starts a comment)")
    return tuple(dict.fromkeys(tokens))


class Tokens:
    """The tokens the collector accepts now; replaced whole, never edited."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._expected: tuple[bytes, ...] = ()
        self.replace(tokens)

    def replace(self, tokens: Iterable[str]) -> None:
        expected = tuple(b"Bearer " + t.encode() for t in tokens)
        if not expected:
            raise TokenError("no token")
        self._expected = expected  # one assignment: a request sees the old set or the new

    def __len__(self) -> int:
        return len(self._expected)

    def check(self, given: bytes) -> str | None:
        """None when an Authorization value (HTTP header, gRPC metadata)
        carries one of the tokens, else why not. Every token is compared,
        whichever matches, so the time taken does not say which."""
        ok = False
        for expected in self._expected:
            ok |= hmac.compare_digest(given, expected)
        if ok:
            return None
        return "a bearer token is required" if not given else "the token is not valid"


class TokenFile:
    """A token file and the tokens it held when last read well.

    `watch()` starts a thread that reads the file again when it changes
    (looked at every `poll` seconds) or when `reload_soon()` is called (the
    collector's SIGHUP handler); `stop()` ends it.
    """

    def __init__(self, path: str | Path, poll: float = POLL_INTERVAL) -> None:
        self.path = Path(path)
        self.poll = poll
        self._signature = self._stat()
        self.tokens = Tokens(self._read())  # raises TokenError: nothing to start with
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> tuple[str, ...]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise TokenError(f"{self.path} is not UTF-8 text") from None
        return parse_tokens(text, str(self.path))

    def reload(self, why: str) -> bool:
        """Read the file again; True if the tokens in force changed. A file
        that cannot be used keeps the tokens in force (logged at ERROR)."""
        self._signature = self._stat()
        try:
            tokens = self._read()
        except TokenError as exc:
            log.error("token file not reloaded (%s): %s; the %d token(s) read before "
                      "stay in force", why, exc, len(self.tokens))  # fmt: skip
            return False
        before = self.tokens._expected
        self.tokens.replace(tokens)
        log.info("token file %s read again (%s): %d token(s) in force",
                 self.path, why, len(tokens))  # fmt: skip
        return before != self.tokens._expected

    def changed(self) -> bool:
        """Whether the file looks different from when it was last read."""
        return self._stat() != self._signature

    def reload_soon(self) -> None:
        """Have the watching thread read the file now (safe in a signal handler)."""
        self._wake.set()

    def watch(self) -> None:
        """Start the thread that reloads the file when it changes or is asked to."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="msgtally-token-file", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.is_set():
            asked = self._wake.wait(self.poll)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                if asked:
                    self.reload("SIGHUP")
                elif self.changed():
                    self.reload("the file changed")
            except Exception:  # never let the watcher die: the tokens stay in force
                log.exception("token file watcher: unexpected error")


# The status page's cookie: the token, kept by the browser after the page asked once.
COOKIE = "msgtally_token"


def cookie_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The token of the page's cookie, as an Authorization value (b"" without one)."""
    for key, value in headers:
        if key != b"cookie":
            continue
        for part in value.split(b";"):
            name, _, token = part.strip().partition(b"=")
            if name == COOKIE.encode() and token:
                return b"Bearer " + token
    return b""


class BearerAuth:
    """Refuses, with a 401, a request without one of the tokens; `on_refused`
    hears the path of each refusal (the collector counts those on its ingest
    endpoints). `page_paths` (the status page and its partials) also take the
    token from the page's cookie, and a browser without it is sent to `login`;
    `open_prefixes` need nothing (the page's login and its scripts), nor the
    page's paths with `page_open` (`--ui-open`)."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: Tokens,
        open_paths: Collection[str],
        on_refused: Callable[[str], None] | None = None,
        page_paths: Callable[[str], bool] | None = None,
        open_prefixes: Collection[str] = (),
        login: str | None = None,
        page_open: bool = False,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.open_paths = frozenset(open_paths)
        self.on_refused = on_refused
        self.page_paths = page_paths
        self.open_prefixes = tuple(open_prefixes)
        self.login = login
        self.page_open = page_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http" or path in self.open_paths
            or (self.open_prefixes and path.startswith(self.open_prefixes))
        ):  # fmt: skip
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        page = self.page_paths is not None and self.page_paths(path)
        if page and self.page_open:
            await self.app(scope, receive, send)
            return
        if page and not given:
            given = cookie_token(scope["headers"])
        reason = self.tokens.check(given)
        if reason is None:
            await self.app(scope, receive, send)
            return
        if page and self.login and scope.get("method") == "GET" and not _htmx(scope):
            await _redirect(send, f"{self.login}?next={quote(path, safe='/')}")
            return
        if self.on_refused is not None:
            self.on_refused(scope["path"])
        from msgtally.ingest.intake import problems  # fastapi: not for every CLI command

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


def _htmx(scope: Scope) -> bool:
    return any(k == b"hx-request" for k, _ in scope["headers"])


async def _redirect(send: Send, location: str) -> None:
    await send({
        "type": "http.response.start",
        "status": 303,
        "headers": [(b"location", location.encode()), (b"content-length", b"0")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": b""})
