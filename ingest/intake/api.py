"""The collector's ingest endpoint: POST /v1/records."""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from msgtally.ingest.intake.bounds import Intake
from msgtally.ingest.intake.cardinality import NameGuard
from msgtally.ingest.intake.kafka_log import LogUnavailable
from msgtally.ingest.intake.metrics import IngestMetrics, ingest_metrics
from msgtally.ingest.intake.problems import problem
from msgtally.ingest.intake.schema import Envelope, Record, RecordError, parse_body
from msgtally.ingest.intake.writer import write_batch

router = APIRouter()

# The request body, described for OpenAPI from the types that validate it.
(_BODY,), BODY_SCHEMAS = msgspec.json.schema_components(
    [list[Record] | Envelope], ref_template="#/components/schemas/{name}"
)


def get_store(request: Request) -> Engine:
    store: Engine = request.app.state.store
    return store


StoreDep = Annotated[Engine, Depends(get_store)]


def get_metrics(request: Request) -> IngestMetrics:
    return ingest_metrics(request.app.state)


MetricsDep = Annotated[IngestMetrics, Depends(get_metrics)]


def get_intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


IntakeDep = Annotated[Intake, Depends(get_intake)]


def _decode_and_store(store: Engine, body: bytes, guard: NameGuard) -> int:
    if not body.strip():
        raise problem(400, "body", "empty; send a JSON array of records")
    try:
        return write_batch(store, parse_body(body), guard=guard)
    except msgspec.DecodeError as exc:
        raise problem(400, "body", f"not valid JSON ({exc})") from None
    except RecordError as exc:
        raise problem(422, exc.field, exc.reason) from None
    except SQLAlchemyError as exc:
        # Nothing of the batch is stored (one transaction); the shim retries.
        raise problem(
            503, None, f"store unavailable: {type(exc).__name__}", headers={"Retry-After": "1"}
        ) from None
    except LogUnavailable as exc:  # the Kafka log: nothing promised, the shim resends
        raise problem(503, None, str(exc), headers={"Retry-After": "1"}) from None


@router.post(
    "/v1/records",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _BODY}}}
    },
)
async def post_records(
    request: Request, store: StoreDep, metrics: MetricsDep, intake: IntakeDep
) -> dict[str, int]:
    """Log a batch of delivery records atomically. A 200 means it is committed;
    a record sent again (a shim's resend) is logged again and counted once."""
    try:
        async with intake.body(request) as body:
            guard = request.app.state.names
            accepted = await run_in_threadpool(_decode_and_store, store, body, guard)
    except HTTPException as exc:
        metrics.rejected(exc.status_code)
        raise
    metrics.accepted(accepted)
    return {"accepted": accepted}
