"""The collector's ingest endpoints: POST /v1/records, /healthz, /readyz."""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from .ingest_metrics import IngestMetrics, ingest_metrics
from .limits import DEFAULT_MAX_BODY
from .problems import problem
from .schema import RecordError, parse_body
from .writer import write_batch

router = APIRouter()


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_metrics(request: Request) -> IngestMetrics:
    return ingest_metrics(request.app.state)


MetricsDep = Annotated[IngestMetrics, Depends(get_metrics)]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise problem(413, "body", f"larger than the limit of {limit} bytes ({declared})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body has no content-length to refuse early
            raise problem(413, "body", f"larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_and_store(engine: Engine, body: bytes) -> int:
    if not body.strip():
        raise problem(400, "body", "empty; send a JSON array of records")
    try:
        batch = parse_body(body)
    except msgspec.DecodeError as exc:
        raise problem(400, "body", f"not valid JSON ({exc})") from None
    except RecordError as exc:
        raise problem(422, exc.field, exc.reason) from None
    try:
        return write_batch(engine, batch)
    except SQLAlchemyError as exc:
        # Nothing of the batch is stored (one transaction); the shim retries.
        raise problem(503, None, f"store unavailable: {type(exc).__name__}") from None


@router.post("/v1/records")
async def post_records(request: Request, engine: EngineDep, metrics: MetricsDep) -> dict[str, int]:
    """Log a batch of delivery records atomically. A 200 means it is committed;
    a record sent again (a shim's resend) is logged again and counted once."""
    limit: int = getattr(request.app.state, "max_body", DEFAULT_MAX_BODY)
    try:
        body = await _read_body(request, limit)
        accepted = await run_in_threadpool(_decode_and_store, engine, body)
    except HTTPException as exc:
        metrics.rejected(exc.status_code)
        raise
    metrics.accepted(accepted)
    return {"accepted": accepted}


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(engine: EngineDep) -> dict[str, str]:
    """The store answers: the collector can take records."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise problem(503, None, f"store unavailable: {type(exc).__name__}") from None
    return {"status": "ready"}
