"""The collector's read endpoints: /v1/slis, /v1/discrepancies, /v1/retry-configs, /metrics."""

from __future__ import annotations

import base64
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from msgtally.ingest.intake.api import StoreDep
from msgtally.ingest.intake.problems import problem
from msgtally.record import MAX_TEXT_LENGTH
from msgtally.slis.spec.model import parse_duration

from .figures import with_contracts
from .query import DISCREPANCY_KINDS, read_discrepancies, read_slis
from .retry_configs import read_audit
from .windows import first_minute, read_window_slis

router = APIRouter()

# A stream or group name, as the record contract has them: a name no record can
# carry (a NUL, too long) is refused here, not handed to the store.
Name = Annotated[
    str | None,
    Query(min_length=1, max_length=MAX_TEXT_LENGTH, pattern="^[^\x00]+$"),
]


Since = Annotated[
    str | None,
    Query(description="a window: 5m, 1h, 6h, 1d, 30d or seconds; the figures judged in it "
          "(the last minutes, the current one included) instead of the running totals"),
]  # fmt: skip


def window_seconds(since: str | None) -> float | None:
    """The `since` parameter in seconds (a 422 naming it when it is no duration)."""
    if since is None:
        return None
    try:
        return parse_duration(since)
    except ValueError as exc:
        raise problem(422, "since", str(exc)) from None


@router.get("/v1/slis")
def get_slis(
    request: Request, store: StoreDep, stream: Name = None, group: Name = None,
    since: Since = None,
) -> list[dict[str, Any]]:
    """Current SLIs per stream and consumer group, with the contract the collector's
    SLO spec (`serve --spec`) declares for each; with `since`, over that window."""
    seconds = window_seconds(since)
    now = time.time()
    with store.connect() as conn:
        if seconds is None:
            slis = read_slis(conn, stream, group)
        else:
            slis = read_window_slis(conn, now, seconds, stream, group)
    rows = [s.to_json() for s in with_contracts(slis, request.app.state.spec)]
    if seconds is not None:
        for row in rows:
            row["window"] = {"since": since, "start": first_minute(now, seconds), "end": now}
    return rows


@router.get("/v1/discrepancies")
def get_discrepancies(
    store: StoreDep,
    kind: Annotated[str, Query(description=f"one of {', '.join(DISCREPANCY_KINDS)}")],
    stream: Name = None,
    group: Name = None,
    after: Annotated[str | None, Query(description="the `next` cursor of a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> dict[str, Any]:
    """The reconciliation report: the ids behind a discrepancy count."""
    if kind not in DISCREPANCY_KINDS:
        raise problem(422, "kind", f"must be one of {', '.join(DISCREPANCY_KINDS)}")
    cursor = None if after is None else decode_cursor(after)
    with store.connect() as conn:
        ids = read_discrepancies(
            conn, kind=kind, stream=stream, group=group, after=cursor, limit=limit
        )
    last = ids[-1] if len(ids) == limit else None
    nxt = encode_cursor((last["stream"], last["message_id"], last["group"])) if last else None
    return {"kind": kind, "stream": stream, "group": group, "ids": ids, "next": nxt}


@router.get("/v1/retry-configs")
def get_retry_configs(
    request: Request, store: StoreDep, stream: Name = None, group: Name = None
) -> list[dict[str, Any]]:
    """Per stream and consumer group, the retry configurations its instances announced
    (those heard from in the last 15 minutes), with their instance counts and the
    audit's findings (instances with each); `contradicts_contract` needs the
    collector's SLO spec (`serve --spec`)."""
    with store.connect() as conn:
        audits = read_audit(conn, time.time(), request.app.state.spec, stream, group)
    return [a.to_json() for a in audits]


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus exposition of the tallies."""
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def encode_cursor(key: tuple[str, str, str]) -> str:
    """An opaque page cursor, safe to paste into a URL: base64url of the last key."""
    raw = json.dumps(key, ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[str, str, str]:
    try:
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:
        key = None
    if not (
        isinstance(key, list)
        and len(key) == 3
        and all(isinstance(k, str) and len(k) <= MAX_TEXT_LENGTH and "\x00" not in k for k in key)
    ):
        raise problem(422, "after", "not a cursor from this API (use the `next` of a page)")
    return (key[0], key[1], key[2])
