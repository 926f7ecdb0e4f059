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
# Why a send or a processing failed: the classes an on-call tells apart
# (docs/adapters.md says how each adapter and OTLP span is classified).
ERROR_CLASSES = ("auth", "serialization", "timeout", "throttled", "unavailable", "poison", "other")


class Field(NamedTuple):
    name: str
    type: str  # text | number | integer | hex | choice
    required: str  # always | consume (consume records only, where it is required) | no
    low: float  # the least value (number, integer) or length (text, hex)
    high: float  # the most
    meaning: str
    choices: tuple[str, ...] = ()
    default: object = None


def _text(name: str, required: str, meaning: str, high: int = MAX_TEXT_LENGTH) -> Field:
    return Field(name, "text", required, 1, high, meaning)


FIELDS: tuple[Field, ...] = (
    _text("stream", "always", "topic, queue, subject, webhook"),
    Field("kind", "choice", "always", 0, 0, "which side saw it", KINDS),
    _text("message_id", "always", "unique per message, stable across retries", MAX_ID_LENGTH),
    Field("ts", "number", "always", 0, MAX_TS,
          "when that side saw it, unix seconds (not milliseconds)"),
    _text("group", "consume", "the consumer group; absent from a produce"),
    Field("attempt", "integer", "no", 1, MAX_ATTEMPT,
          "send attempt (produce) or delivery attempt (consume)", default=1),
    Field("outcome", "choice", "no", 0, 0,
          "produce: acknowledged (`ok`) or indeterminate (`error`); consume: the processing "
          "result (`dead_letter` is a consume outcome)", CONSUME_OUTCOMES, "ok"),
    _text("producer", "no", "the sending instance (a shim: its instance id)"),
    Field("seq", "integer", "no", 0, MAX_SEQ,
          "the record's number in its producer's sequence for its (stream, kind, group), from 1"),
    Field("trace_id", "hex", "no", 32, 32, "the OpenTelemetry trace of the record's span"),
    Field("span_id", "hex", "no", 16, 16, "the record's OpenTelemetry span"),
    _text("record_id", "no", "unique per record, so that a resend is recognised"),
    Field("error", "choice", "no", 0, 0,
          "the class of a failed send or processing (absent: not classified); only with "
          "outcome `error` or `dead_letter`", ERROR_CLASSES),
)  # fmt: skip

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)


def _number(x: float) -> str:
    """2^31-1, 2^63-1, 10^10: the bounds as people write them."""
    n = int(x)
    if n + 1 == 1 << (n + 1).bit_length() - 1 and n > 1000:
        return f"2^{(n + 1).bit_length() - 1}-1"
    if n >= 1000 and str(n).rstrip("0") == "1":
        return f"10^{len(str(n)) - 1}"
    return f"{x:g}"


def describe(field: Field) -> str:
    """A field's type and bounds as the documentation says them."""
    default = f" (default `{field.default}`)" if field.default is not None else ""
    if field.type == "text":
        return f"text, {field.low:g} to {field.high:g} characters"
    if field.type == "hex":
        return f"{field.low:g} hexadecimal characters"
    if field.type == "choice":
        return " / ".join(f"`{c}`" for c in field.choices) + default
    return f"{field.type}, {_number(field.low)} to {_number(field.high)}{default}"


def table() -> str:
    """The fields as the Markdown table of docs/definitions.md."""
    rows = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for f in FIELDS:
        rows.append(f"| `{f.name}` | {describe(f)} | {f.required} | {f.meaning} |")
    return "\n".join(rows) + "\n"
