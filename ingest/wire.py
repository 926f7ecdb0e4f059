"""The delivery record on the wire, as the shim writes it.

A leaf module on purpose: the shim builds records as tuples in FIELDS order
(cheaper than objects on a per-message path) and turns them into JSON here,
without loading the collector's validating schema (msgtally.ingest.schema,
whose structs carry the same fields: a test holds them together).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FIELDS = (
    "stream",
    "kind",
    "message_id",
    "ts",
    "group",
    "attempt",
    "outcome",
    "producer",
    "seq",
    "trace_id",
    "span_id",
    "record_id",
)


def record_to_json(record: Sequence[Any]) -> dict[str, Any]:
    """The wire form of a record (a tuple in FIELDS order), without absent
    optional fields (None, or the empty group of a produce)."""
    out: dict[str, Any] = {}
    for key, value in zip(FIELDS, record, strict=True):
        if value is None or (key == "group" and not value):
            continue
        out[key] = value
    return out
