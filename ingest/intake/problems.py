"""One shape for every error the collector answers with.

    {"detail": {"field": "records[3].ts", "reason": "must be finite and not negative, got -1"}}

`field` names what was wrong (a record field path, `body`, a query parameter)
or is null when nothing in the request is to blame (a store that is down).
Clients, the shim among them, read `detail.field` to find the bad record.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


def problem(
    status: int, field: str | None, reason: str, headers: dict[str, str] | None = None
) -> HTTPException:
    """The exception to raise for an error answer: status, what was wrong, why."""
    return HTTPException(status, {"field": field, "reason": reason}, headers=headers)


def body(field: str | None, reason: str) -> dict[str, Any]:
    return {"detail": {"field": field, "reason": reason}}


def install(app: FastAPI) -> None:
    """Give the framework's own errors (404, 405, bad query parameters) the same shape."""

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail: Any = exc.detail
        if not (isinstance(detail, dict) and set(detail) == {"field", "reason"}):
            detail = {"field": None, "reason": str(detail)}
        return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"][1:]) or str(first["loc"][0])
        return JSONResponse(body(field, str(first["msg"])), 422)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
