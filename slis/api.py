"""The collector's read endpoints: /v1/slis, /v1/discrepancies, /metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from msgtally.ingest.api import EngineDep

from .query import DISCREPANCY_KINDS, read_discrepancies, read_slis

router = APIRouter()


@router.get("/v1/slis")
def get_slis(
    engine: EngineDep, stream: str | None = None, group: str | None = None
) -> list[dict[str, Any]]:
    """Current SLIs per stream and consumer group."""
    with engine.connect() as conn:
        return [s.to_json() for s in read_slis(conn, stream, group)]


@router.get("/v1/discrepancies")
def get_discrepancies(
    engine: EngineDep,
    kind: Annotated[str, Query(description=f"one of {', '.join(DISCREPANCY_KINDS)}")],
    stream: str | None = None,
    group: str | None = None,
    after: Annotated[str | None, Query(description="the `next` cursor of a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> dict[str, Any]:
    """The reconciliation report: the ids behind a discrepancy count."""
    if kind not in DISCREPANCY_KINDS:
        raise HTTPException(422, {"field": "kind", "reason": f"must be one of {DISCREPANCY_KINDS}"})
    cursor: tuple[str, str, str] | None = None
    if after is not None:
        parts = after.split("\x1f")
        if len(parts) != 3:
            raise HTTPException(422, {"field": "after", "reason": "not a cursor from this API"})
        cursor = (parts[0], parts[1], parts[2])
    with engine.connect() as conn:
        ids = read_discrepancies(
            conn, kind=kind, stream=stream, group=group, after=cursor, limit=limit
        )
    last = ids[-1] if len(ids) == limit else None
    nxt = "\x1f".join((last["stream"], last["message_id"], last["group"])) if last else None
    return {"kind": kind, "stream": stream, "group": group, "ids": ids, "next": nxt}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus exposition of the tallies."""
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
