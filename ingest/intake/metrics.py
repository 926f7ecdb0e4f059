"""The collector's own ingest counters, in the app's registry (GET /metrics).

- `msgtally_ingest_records_total{result="accepted"}`: records of committed
  batches (a resent record is logged again; the engine counts it once).
- `msgtally_ingest_rejected_total{reason}`: POST /v1/records requests
  refused, nothing of them stored: `malformed` (400: empty or not JSON),
  `unauthorized` (401: no token, or not one the collector accepts; the shim
  holds its records and retries),
  `too_slow` (408: the body did not arrive in time), `too_large` (413),
  `invalid` (422: a record breaks the contract), `busy` (429: too many bytes
  in progress; the shim retries), `store_unavailable` (503: the shim retries).

Every label value exists from the start at 0, so `rate()` sees the first
batch and a collector that never refused anything still shows a flat line.
These count per collector process: sum them over collectors.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter
from prometheus_client.registry import CollectorRegistry

from msgtally.names import INGEST_RECORDS, INGEST_REJECTED

# HTTP status of a refused request -> the `reason` label.
REASONS = {
    400: "malformed",
    401: "unauthorized",
    408: "too_slow",
    413: "too_large",
    422: "invalid",
    429: "busy",
    503: "store_unavailable",
}
OTHER = "other"
_CREATE = threading.Lock()


class IngestMetrics:
    """Pre-bound counters of one collector (one registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        records = Counter(
            INGEST_RECORDS,
            "Records of committed batches (logged; the engine counts a resent one once).",
            ["result"],
            registry=registry,
        )
        rejected = Counter(
            INGEST_REJECTED,
            "POST /v1/records requests refused, nothing of them stored, by reason.",
            ["reason"],
            registry=registry,
        )
        self._accepted = records.labels("accepted")
        self._rejected = {reason: rejected.labels(reason) for reason in (*REASONS.values(), OTHER)}

    def accepted(self, n: int) -> None:
        self._accepted.inc(n)

    def rejected(self, status: int) -> None:
        self._rejected[REASONS.get(status, OTHER)].inc()


def ingest_metrics(state: Any) -> IngestMetrics:
    """The app's IngestMetrics (`app.state`), created in its registry on first use."""
    metrics: IngestMetrics | None = getattr(state, "ingest_metrics", None)
    if metrics is None:
        with _CREATE:  # two first requests at once must not register twice
            metrics = getattr(state, "ingest_metrics", None)
            if metrics is None:
                metrics = IngestMetrics(state.registry)
                state.ingest_metrics = metrics
    return metrics
