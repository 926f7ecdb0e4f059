"""The delivery record, stated once: its fields in wire order, their types,
their bounds and what each means.

A leaf module (nothing of msgtally imported): the shim builds its records
from it without loading the collector. Everything else that knows the record
derives from this table or is held to it by tests/test_record.py: the shim's
tuples and their JSON (`ingest/shim/wire.py`), the collector's validating
types (`ingest/intake/schema.py`), the C engine's field table, the test
oracle's `Record`, and the table in docs/definitions.md.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_ID_LENGTH = 256  # message_id, in characters
MAX_TEXT_LENGTH = 256  # stream, group, producer, record_id (and a shim's source name)
MAX_TS = 1e10  # unix seconds: the year 2286; beyond is a unit mistake (ms, us)
MAX_ATTEMPT = 2**31 - 1
MAX_SEQ = 2**63 - 1
MAX_DROP_TOTAL = 2**40  # one shim's running total; many summed stay far below 2**63

KINDS = ("produce", "consume")
PRODUCE_OUTCOMES = ("ok", "error")
CONSUME_OUTCOMES = ("ok", "error", "dead_letter")


class Field(NamedTuple):
    name: str
    type: str  # as the docs say it
    required: str  # "yes", "consume" (consume records only), "no"
    meaning: str


FIELDS: tuple[Field, ...] = (
    Field("stream", f"str, 1..{MAX_TEXT_LENGTH} chars", "yes", "topic, queue, subject, webhook"),
    Field("kind", "`produce` / `consume`", "yes", "which side saw it"),
    Field("message_id", f"str, 1..{MAX_ID_LENGTH} chars", "yes",
          "unique per message, stable across retries"),
    Field("ts", "number, unix seconds, 0 to 10^10", "yes",
          "when that side saw it (seconds, not milliseconds)"),
    Field("group", f"str, 1..{MAX_TEXT_LENGTH} chars", "consume",
          "consumer group; required for consume, absent for produce"),
    Field("attempt", "int, 1 to 2^31-1 (default 1)", "no",
          "send attempt (produce) or delivery attempt (consume)"),
    Field("outcome", "`ok` (default), `error`, `dead_letter`", "no",
          "produce: acknowledged (`ok`) or indeterminate (`error`); consume: the processing "
          "result (`dead_letter`: consume only)"),
    Field("producer", f"str, 1..{MAX_TEXT_LENGTH} chars", "no",
          "the sending instance (a shim: its instance id)"),
    Field("seq", "int, 0 to 2^63-1", "no",
          "the record's number in its producer's sequence for its (stream, kind, group), from 1"),
    Field("trace_id", "32 hex chars", "no", "the OpenTelemetry trace of the span"),
    Field("span_id", "16 hex chars", "no", "the OpenTelemetry span"),
    Field("record_id", f"str, 1..{MAX_TEXT_LENGTH} chars", "no",
          "unique per record, so that a resend is recognised"),
)  # fmt: skip

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
