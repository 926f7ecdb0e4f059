"""OTLP/HTTP: POST /v1/traces, protobuf or JSON, plain, gzip or deflate.

Answers as the OTLP specification says: 200 with an ExportTraceServiceResponse
(partial_success counts the rejected spans and says why), 400 for a body that
is no request, 413 past --max-body (before or after decompression), 429 and
503 with Retry-After (exporters retry them); every error body a
google.rpc.Status in the request's encoding. Bodies are held within the
collector's byte budget (ingest.intake) while they are read, decompressed and
stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from msgtally.ingest.intake.api import IntakeDep, MetricsDep, StoreDep
from msgtally.ingest.intake.otlp.decode import (
    JSON,
    PROTOBUF,
    answer,
    compressed,
    inflate,
    media_type,
    status_body,
)
from msgtally.ingest.intake.otlp.export import export_body
from msgtally.ingest.intake.otlp.metrics import OtlpMetrics

router = APIRouter()


def get_otlp_metrics(request: Request) -> OtlpMetrics:
    metrics: OtlpMetrics = request.app.state.otlp_metrics
    return metrics


OtlpMetricsDep = Annotated[OtlpMetrics, Depends(get_otlp_metrics)]

_BODY = {
    PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
    JSON: {"schema": {"type": "object"}},
}


async def decompressed(raw: bytes, encoding: str, limit: int, take: Callable[[int], None]) -> bytes:
    """The body decompressed on the event loop a step at a time, each step
    counted (`take`) before the next: memory stays within the budget."""
    if not compressed(encoding):
        return raw  # counted as it was read
    chunks = []
    for chunk in inflate(raw, encoding, limit):
        take(len(chunk))
        chunks.append(chunk)
        await asyncio.sleep(0)  # other requests between steps
    return b"".join(chunks)


@router.post(
    "/v1/traces",
    response_class=Response,
    openapi_extra={"requestBody": {"required": True, "content": _BODY}},
    responses={200: {"content": _BODY, "description": "ExportTraceServiceResponse"}},
)
async def post_traces(
    request: Request,
    store: StoreDep,
    intake: IntakeDep,
    metrics: MetricsDep,
    otlp: OtlpMetricsDep,
) -> Response:
    """OTLP/HTTP trace export: messaging spans become delivery records (README,
    "OTLP traces in"). An exporter's retry of a request counts once."""
    try:
        media = media_type(request.headers.get("content-type"))
    except HTTPException:
        otlp.rejected("http", 415)
        raise  # the request's encoding is unknown: the collector's own error shape
    encoding = request.headers.get("content-encoding", "")
    try:
        async with intake.body(request) as raw:
            with intake.held() as take:
                body = await decompressed(raw, encoding, intake.max_body, take)
                guard = request.app.state.names
                outcome = await run_in_threadpool(export_body, store, body, media, guard)
    except HTTPException as exc:
        otlp.rejected("http", exc.status_code)
        return Response(status_body(exc, media), exc.status_code, exc.headers, media)
    metrics.accepted(outcome.logged)
    otlp.spans("http", outcome.spans)
    return Response(answer(outcome.rejected, outcome.message(), media), media_type=media)
