"""OpenTelemetry for the shims: messaging spans and W3C trace context in headers."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TracerProvider

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# Semantic-convention attribute names (messaging, v1.26+).
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
OPERATION_TYPE = "messaging.operation.type"
CONSUMER_GROUP = "messaging.consumer.group.name"
# msgtally's own (no convention defines a delivery attempt for every system);
# the collector's OTLP mapping reads both (README, "OTLP traces in").
ATTEMPT = "msgtally.attempt"
OUTCOME = "msgtally.outcome"


class MessagingTracer:
    """Starts PRODUCER (send) and CONSUMER (process) spans for one system.

    The W3C traceparent is written and read here directly, not through the
    propagator API: the same hex ids go into the record, and it is the
    cheapest correct way on a per-message path.
    """

    def __init__(self, provider: TracerProvider | None, system: str) -> None:
        provider = provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("msgtally")
        self.system = system

    def send(
        self, stream: str, message_id: str, headers: MutableMapping[str, str]
    ) -> tuple[Any, tuple[str | None, str | None]]:
        """A started PRODUCER span and its hex ids; its context goes into `headers`."""
        span = self._tracer.start_span(
            f"send {stream}",
            kind=SpanKind.PRODUCER,
            attributes={
                SYSTEM: self.system,
                DESTINATION: stream,
                MESSAGE_ID: message_id,
                OPERATION_TYPE: "send",
            },
        )
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return span, (None, None)
        trace_hex, span_hex = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
        headers[TRACEPARENT] = f"00-{trace_hex}-{span_hex}-{ctx.trace_flags:02x}"
        if ctx.trace_state:
            headers[TRACESTATE] = ctx.trace_state.to_header()
        return span, (trace_hex, span_hex)

    def process(
        self,
        stream: str,
        message_id: str,
        group: str,
        attempt: int,
        headers: Mapping[str, Any] | None,
    ) -> Any:
        """A started CONSUMER span, linked to the producer's span from `headers`."""
        parent = parse_traceparent(headers.get(TRACEPARENT)) if headers else None
        attributes: dict[str, Any] = {
            SYSTEM: self.system,
            DESTINATION: stream,
            MESSAGE_ID: message_id,
            OPERATION_TYPE: "process",
            CONSUMER_GROUP: group,
            ATTEMPT: attempt,
        }
        return self._tracer.start_span(
            f"process {stream}",
            kind=SpanKind.CONSUMER,
            links=(Link(parent),) if parent is not None else None,
            attributes=attributes,
        )


def parse_traceparent(value: object) -> SpanContext | None:
    """The remote span context of a W3C traceparent, or None if it is not one."""
    if type(value) is not str or len(value) != 55:
        return None
    version, trace_hex, span_hex, flags = value.split("-") if value.count("-") == 3 else ("",) * 4
    if version == "ff" or len(version) != 2 or len(trace_hex) != 32 or len(span_hex) != 16:
        return None
    try:
        trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
        trace_flags = TraceFlags(int(flags, 16))
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace_flags)


def span_ids(span: Any) -> tuple[str | None, str | None]:
    """Hex trace and span ids of a recording span, for the delivery record."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
