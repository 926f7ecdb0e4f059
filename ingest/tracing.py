"""OpenTelemetry for the shims: messaging spans and W3C trace context in headers."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()

# Semantic-convention attribute names (messaging, v1.26+).
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
OPERATION_TYPE = "messaging.operation.type"
CONSUMER_GROUP = "messaging.consumer.group.name"
DELIVERY_COUNT = "messaging.message.delivery_count"


class MessagingTracer:
    """Starts PRODUCER (send) and CONSUMER (process) spans for one system."""

    def __init__(self, provider: TracerProvider | None, system: str) -> None:
        provider = provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("msgtally")
        self.system = system

    def send(self, stream: str, message_id: str, headers: MutableMapping[str, str]) -> Any:
        """A started PRODUCER span; its context is written into `headers`."""
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
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        return span

    def process(
        self,
        stream: str,
        message_id: str,
        group: str,
        attempt: int,
        headers: Mapping[str, str] | None,
    ) -> Any:
        """A started CONSUMER span, linked to the producer's span from `headers`."""
        links = []
        if headers:
            ctx: Context = _PROPAGATOR.extract(headers)
            parent = trace.get_current_span(ctx).get_span_context()
            if parent.is_valid:
                links.append(Link(parent))
        return self._tracer.start_span(
            f"process {stream}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                SYSTEM: self.system,
                DESTINATION: stream,
                MESSAGE_ID: message_id,
                OPERATION_TYPE: "process",
                CONSUMER_GROUP: group,
                DELIVERY_COUNT: attempt,
            },
        )


def span_ids(span: Any) -> tuple[str | None, str | None]:
    """Hex trace and span ids of a recording span, for the delivery record."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
