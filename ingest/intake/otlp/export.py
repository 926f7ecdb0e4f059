"""One OTLP export request: its spans mapped, their records checked by the
record contract, the accepted ones stored in one commit (ingest.writer).

A span is recorded whole or rejected whole: a rejected span (an attribute
the conventions cannot read, a record the contract refuses, a new name past
--max-series) is counted in the answer's partial_success with the reason,
and the rest of the request is stored. Spans that name no delivery are
ignored and counted, not rejected.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from msgtally.ingest.intake.cardinality import NameGuard
from msgtally.ingest.intake.kafka_log import LogUnavailable
from msgtally.ingest.intake.otlp.decode import PROTOBUF, parse
from msgtally.ingest.intake.otlp.mapping import (
    WANTED_KEYS,
    Ignored,
    Mapped,
    Refused,
    SpanView,
    Views,
    map_view,
    service_name,
    view_of,
)
from msgtally.ingest.intake.problems import problem
from msgtally.ingest.intake.schema import Batch, Record, RecordError, group_of, parse_batch
from msgtally.ingest.intake.writer import write_batch

try:  # the C reader of span views (setup.py); without it, the official types alone
    from msgtally.ingest.intake.otlp import _spans
except ImportError:  # pragma: no cover - a build without a compiler
    _spans = None  # type: ignore[assignment]

RECORDED = "recorded"
REJECTED = "rejected"
MAX_REASONS = 5  # in the answer's error_message; the count covers them all
_INDEX = re.compile(r"^records\[(\d+)\]\.?(.*)$")


@dataclass
class Outcome:
    """What became of a request's spans."""

    logged: int = 0  # records committed
    spans: Counter[str] = field(default_factory=Counter)  # RECORDED, REJECTED, mapping.IGNORED
    refusals: list[tuple[int, str]] = field(default_factory=list)  # (span's place, why)

    @property
    def rejected(self) -> int:
        return self.spans[REJECTED]

    def message(self) -> str:
        """partial_success.error_message: empty when no span was rejected."""
        if not self.refusals:
            return ""
        shown = "; ".join(line for _, line in sorted(self.refusals)[:MAX_REASONS])
        more = len(self.refusals) - MAX_REASONS
        tail = f"; and {more} more" if more > 0 else ""
        return f"{len(self.refusals)} spans rejected: {shown}{tail}"


class _Span:
    """A span that maps to records, and what the contract made of them."""

    __slots__ = ("mapped", "path", "place", "records", "view")

    def __init__(
        self, place: int, path: tuple[int, int, int], view: SpanView, mapped: Mapped
    ) -> None:
        self.place = place  # in the request, counted over all its spans
        self.path = path  # resourceSpans, scopeSpans, spans
        self.view = view
        self.mapped = mapped
        self.records: list[Record] = []

    @property
    def where(self) -> str:
        return _where(self.path, self.view)


def _where(path: tuple[int, int, int], view: SpanView) -> str:
    i, j, k = path
    return f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}] " \
        f"(span {view[0].hex()}/{view[1].hex()})"  # fmt: skip


def _refuse(outcome: Outcome, span: _Span, exc: RecordError) -> None:
    """A contract refusal of a span's record, named by the attribute it came from."""
    outcome.spans[REJECTED] += 1
    match = _INDEX.match(exc.field)
    if match is None:
        line = f"{span.where}: {exc.field}: {exc.reason}"
    else:
        line = f"{span.where}: {span.mapped.source(int(match[1]), match[2])}: {exc.reason}"
    outcome.refusals.append((span.place, line))


def read_views(request: ExportTraceServiceRequest, body: bytes) -> Views | None:
    """The span views of a protobuf body (`request`: the same body parsed) per
    resourceSpans and scopeSpans, None for a span to read with the official
    types; None when the C reader is missing or leaves the whole body to them."""
    if _spans is None:
        return None
    views = _spans.views(body, WANTED_KEYS)
    if views is None or len(views) != len(request.resource_spans):
        return None
    for resource_views, resource_spans in zip(views, request.resource_spans, strict=True):
        if len(resource_views) != len(resource_spans.scope_spans):
            return None
        scopes = resource_spans.scope_spans
        for scope_views, scope_spans in zip(resource_views, scopes, strict=True):
            if len(scope_views) != len(scope_spans.spans):
                return None
    return views


def _views(scope_spans: ScopeSpans, read: list[SpanView | None] | None) -> Iterator[SpanView]:
    if read is None:
        yield from map(view_of, scope_spans.spans)
        return
    for k, view in enumerate(read):
        yield view_of(scope_spans.spans[k]) if view is None else view


def map_request(
    request: ExportTraceServiceRequest, outcome: Outcome, body: bytes | None = None
) -> list[_Span]:
    """The spans that map to records; the others are counted in `outcome`.
    `body`: the protobuf bytes of `request`, read by the C reader when given."""
    views = None if body is None else read_views(request, body)
    spans: list[_Span] = []
    place = 0
    for i, resource_spans in enumerate(request.resource_spans):
        service = service_name(resource_spans.resource)
        for j, scope_spans in enumerate(resource_spans.scope_spans):
            scope = scope_spans.scope.name
            read = None if views is None else views[i][j]
            for k, view in enumerate(_views(scope_spans, read)):
                place += 1
                mapped = map_view(view, scope, service)
                if type(mapped) is Mapped:  # the common case first
                    spans.append(_Span(place, (i, j, k), view, mapped))
                    continue
                if isinstance(mapped, Ignored):
                    outcome.spans[mapped.reason] += 1
                    continue
                if isinstance(mapped, Refused):
                    outcome.spans[REJECTED] += 1
                    where = _where((i, j, k), view)
                    outcome.refusals.append((place, f"{where}: {mapped.reason}"))
    return spans


def _check(spans: list[_Span], outcome: Outcome) -> list[_Span]:
    """Each span's records through the record contract; the spans it accepts."""
    everything = [r for s in spans for r in s.mapped.records]
    if not everything:
        return []
    try:  # the common case: one pass over the whole request
        records = parse_batch(everything)
    except RecordError:
        kept = []
        for span in spans:
            try:
                span.records = parse_batch(span.mapped.records)
            except RecordError as exc:
                _refuse(outcome, span, exc)
                continue
            kept.append(span)
        return kept
    start = 0
    for span in spans:
        end = start + len(span.mapped.records)
        span.records = records[start:end]
        start = end
    return spans


def _store(
    store: Engine,
    spans: list[_Span],
    outcome: Outcome,
    guard: NameGuard | None,
    received_at: float | None,
) -> None:
    """One commit of every accepted span's records. A name the guard refuses
    (past --max-series) rejects the spans that carry it, and the rest is stored."""
    while spans:
        records = [r for s in spans for r in s.records]
        try:
            outcome.logged = write_batch(store, Batch(records, [], None), received_at, guard)
        except RecordError as exc:
            match = _INDEX.match(exc.field)
            if match is None:
                raise
            refused = records[int(match[1])]
            name = (refused.stream, group_of(refused))
            kept = []
            for span in spans:
                index = next(
                    (n for n, r in enumerate(span.records) if (r.stream, group_of(r)) == name),
                    None,
                )
                if index is None:
                    kept.append(span)
                    continue
                _refuse(outcome, span, RecordError(f"records[{index}].{match[2]}", exc.reason))
            spans = kept
            continue
        outcome.spans[RECORDED] += len(spans)
        return


def export(
    store: Engine,
    request: ExportTraceServiceRequest,
    guard: NameGuard | None = None,
    received_at: float | None = None,
    body: bytes | None = None,
) -> Outcome:
    """Map, check and store one request (`body`: its protobuf bytes, if any).
    Raises SQLAlchemyError when the store fails (nothing of the request is
    stored then)."""
    outcome = Outcome()
    spans = _check(map_request(request, outcome, body), outcome)
    _store(store, spans, outcome, guard, received_at)
    return outcome


def export_body(store: Engine, body: bytes, media: str, guard: NameGuard | None) -> Outcome:
    """A request body (decompressed) in `media`, mapped, checked and stored.
    Raises a problem: 400 for a body that is no request, 503 when the store fails."""
    request = parse(body, media)
    try:
        return export(store, request, guard, body=body if media == PROTOBUF else None)
    except SQLAlchemyError as exc:
        # Nothing of the request is stored (one transaction): the exporter retries.
        raise problem(
            503, None, f"store unavailable: {type(exc).__name__}", headers={"Retry-After": "1"}
        ) from None
    except LogUnavailable as exc:  # the Kafka log: nothing promised, the exporter retries
        raise problem(503, None, str(exc), headers={"Retry-After": "1"}) from None
