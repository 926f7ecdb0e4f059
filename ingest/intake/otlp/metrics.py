"""The collector's OTLP counters, in the app's registry (GET /metrics).

- `msgtally_otlp_spans_total{transport, result}`: spans taken in, by what
  became of them: `recorded`, `rejected` (in the answer's partial_success),
  or ignored: `not_messaging`, `not_a_delivery` (receive, settle),
  `no_message_id`, `from_shim` (the shim sent those records itself).
- `msgtally_otlp_rejected_total{transport, reason}`: export requests refused,
  nothing of them stored (reasons as msgtally_ingest_rejected_total's).

Their records count in msgtally_ingest_records_total like any other.
Every label value exists from the start at 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter
from prometheus_client.registry import CollectorRegistry

from msgtally.ingest.intake.metrics import OTHER, REASONS
from msgtally.ingest.intake.otlp.export import RECORDED, REJECTED
from msgtally.ingest.intake.otlp.mapping import IGNORED

TRANSPORTS = ("http", "grpc")


class OtlpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        spans = Counter(
            "msgtally_otlp_spans",
            "Spans taken in over OTLP, by what became of them (recorded, rejected, ignored: why).",
            ["transport", "result"],
            registry=registry,
        )
        rejected = Counter(
            "msgtally_otlp_rejected",
            "OTLP export requests refused, nothing of them stored, by reason.",
            ["transport", "reason"],
            registry=registry,
        )
        self._spans = {
            (t, result): spans.labels(t, result)
            for t in TRANSPORTS
            for result in (RECORDED, REJECTED, *IGNORED)
        }
        self._rejected = {
            (t, reason): rejected.labels(t, reason)
            for t in TRANSPORTS
            for reason in (*REASONS.values(), OTHER)
        }

    def spans(self, transport: str, counts: Mapping[str, int]) -> None:
        for result, n in counts.items():
            self._spans[(transport, result)].inc(n)

    def rejected(self, transport: str, status: int) -> None:
        self._rejected[(transport, REASONS.get(status, OTHER))].inc()
