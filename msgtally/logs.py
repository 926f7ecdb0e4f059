"""The collector's logs: one setup for uvicorn's loggers and msgtally's own.

- `configure(level, fmt)`: every record goes to stderr through one handler on
  the root logger, at `level` (debug, info, warning, error), as text
  (`2024-05-01T12:00:00.123Z INFO msgtally: ...`) or as JSON, one object a
  line: `time` (RFC 3339, UTC), `level`, `logger`, `message`; the access
  log's fields (`method`, `path`, `status`, `duration_ms`, `client`); an
  exception as the `exc_info` string.
- `AccessLog`: ASGI middleware writing one INFO line per HTTP request to the
  `msgtally.access` logger (method, path, status, duration). Off unless
  asked for (`serve --access-log`): a shim's POST every second and every
  scrape are not news. uvicorn's own access log (which has no duration) is
  always off.

docs/operations.md shows both formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:  # no starlette needed to configure logs (the shim's commands)
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("text", "json")
ACCESS_LOGGER: Final = "msgtally.access"
# The fields an access line carries beside its message, in this order.
ACCESS_FIELDS: Final = ("method", "path", "status", "duration_ms", "client")
# uvicorn configures these itself unless told not to (log_config=None): here
# they only pass their records on to the root handler.
UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def rfc3339(created: float) -> str:
    """`2024-05-01T12:00:00.123Z`: a record's time, in UTC, to the millisecond."""
    return (
        datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        )
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a line (a message's newlines are escaped, never split)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ACCESS_FIELDS:
            if field in record.__dict__:
                line[field] = record.__dict__[field]
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2024-05-01T12:00:00.123Z INFO msgtally: message`, times in UTC."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)


def configure(level: str, fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record at `level` or above to `stream` (stderr) in
    `fmt`; uvicorn's loggers included. Returns the handler it installed."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    logging.captureWarnings(True)
    return handler


def json_configured() -> bool:
    """Whether the root logger writes JSON (a command's last words go there too)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


class AccessLog:
    """One INFO line per HTTP request on `msgtally.access`, once it is answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, answer)
        finally:
            ms = round((time.perf_counter() - started) * 1000, 3)
            client = scope.get("client")
            fields = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": ms,
                "client": f"{client[0]}:{client[1]}" if client else None,
            }
            self.log.info(
                "%s %s %d %.1fms", scope["method"], scope["path"], status, ms, extra=fields
            )
