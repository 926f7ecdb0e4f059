"""The delivery record: the contract between the shims and the collector.

Validation is hand-written rather than a pydantic model per record: ingest
validates every record of every batch, and this path is about four times
cheaper. Every error names the record's index, the field and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from .limits import MAX_ID_LENGTH, MAX_TEXT_LENGTH

KINDS = ("produce", "consume")
OUTCOMES = ("ok", "error", "dead_letter")
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
_KNOWN = frozenset(FIELDS)
_HEX = frozenset("0123456789abcdefABCDEF")


class Record(NamedTuple):
    """One produce or consume event, validated. `group` is "" for produces."""

    stream: str
    kind: str
    message_id: str
    ts: float
    group: str = ""
    attempt: int = 1
    outcome: str = "ok"
    producer: str | None = None
    seq: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    record_id: str | None = None


class RecordError(ValueError):
    """A record that breaks the contract; `field` is a path like records[3].ts."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _text(obj: dict[str, Any], key: str, where: str, *, required: bool, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise RecordError(f"{where}.{key}", "field required")
        return None
    if type(value) is not str:
        raise RecordError(f"{where}.{key}", f"must be a string, got {type(value).__name__}")
    if not value:
        raise RecordError(f"{where}.{key}", "must not be empty")
    if len(value) > limit:
        raise RecordError(f"{where}.{key}", f"longer than {limit} characters ({len(value)})")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError(f"{where}.{key}", "not valid Unicode (a lone surrogate)") from None
    return value


def _int(obj: dict[str, Any], key: str, where: str, minimum: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise RecordError(f"{where}.{key}", f"must be an integer, got {type(value).__name__}")
    if value < minimum or value > 2**63 - 1:
        raise RecordError(f"{where}.{key}", f"must be between {minimum} and 2**63-1, got {value}")
    return value


def _hex(obj: dict[str, Any], key: str, where: str, length: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str or len(value) != length or not _HEX.issuperset(value):
        raise RecordError(f"{where}.{key}", f"must be {length} hexadecimal characters")
    return value.lower()


def validate_record(obj: Any, index: int = 0) -> Record:
    """Check one decoded JSON object against the record contract."""
    where = f"records[{index}]"
    if not isinstance(obj, dict):
        raise RecordError(where, f"must be an object, got {type(obj).__name__}")
    unknown = obj.keys() - _KNOWN
    if unknown:
        raise RecordError(f"{where}.{sorted(unknown)[0]}", "unknown field")
    stream = _text(obj, "stream", where, required=True, limit=MAX_TEXT_LENGTH)
    message_id = _text(obj, "message_id", where, required=True, limit=MAX_ID_LENGTH)
    kind = obj.get("kind")
    if kind not in KINDS:
        reason = (
            "field required" if kind is None else f"must be 'produce' or 'consume', got {kind!r}"
        )
        raise RecordError(f"{where}.kind", reason)
    ts = obj.get("ts")
    if ts is None:
        raise RecordError(f"{where}.ts", "field required")
    if type(ts) not in (int, float):
        raise RecordError(
            f"{where}.ts", f"must be a number (unix seconds), got {type(ts).__name__}"
        )
    if not math.isfinite(ts) or ts < 0:
        raise RecordError(f"{where}.ts", f"must be finite and not negative, got {ts}")
    group = _text(obj, "group", where, required=kind == "consume", limit=MAX_TEXT_LENGTH)
    if kind == "produce" and group is not None:
        raise RecordError(f"{where}.group", "only consume records carry a group")
    attempt = _int(obj, "attempt", where, 1)
    outcome = obj.get("outcome", "ok")
    if outcome not in OUTCOMES:
        raise RecordError(
            f"{where}.outcome", f"must be one of ok, error, dead_letter, got {outcome!r}"
        )
    if kind == "produce" and outcome == "dead_letter":
        raise RecordError(f"{where}.outcome", "dead_letter is a consume outcome")
    return Record(
        stream,  # type: ignore[arg-type]  # required=True never returns None
        kind,
        message_id,  # type: ignore[arg-type]
        float(ts),
        group or "",
        1 if attempt is None else attempt,
        outcome,
        _text(obj, "producer", where, required=False, limit=MAX_TEXT_LENGTH),
        _int(obj, "seq", where, 0),
        _hex(obj, "trace_id", where, 32),
        _hex(obj, "span_id", where, 16),
        _text(obj, "record_id", where, required=False, limit=MAX_TEXT_LENGTH),
    )


class DropReport(NamedTuple):
    """A shim's running total of records it dropped before sending them."""

    source: str
    stream: str
    kind: str
    group: str
    total: int


class Batch(NamedTuple):
    records: list[Record]
    drops: list[DropReport]


_BODY_KEYS = frozenset({"records", "source", "dropped"})


def _drop_report(obj: Any, index: int, source: str) -> DropReport:
    where = f"dropped[{index}]"
    if not isinstance(obj, dict):
        raise RecordError(where, f"must be an object, got {type(obj).__name__}")
    unknown = obj.keys() - {"stream", "kind", "group", "total"}
    if unknown:
        raise RecordError(f"{where}.{sorted(unknown)[0]}", "unknown field")
    stream = _text(obj, "stream", where, required=True, limit=MAX_TEXT_LENGTH)
    kind = obj.get("kind")
    if kind not in KINDS:
        raise RecordError(f"{where}.kind", f"must be 'produce' or 'consume', got {kind!r}")
    group = obj.get("group", "")
    if type(group) is not str or len(group) > MAX_TEXT_LENGTH:
        raise RecordError(f"{where}.group", "must be a string of at most 256 characters")
    total = _int(obj, "total", where, 0)
    if total is None:
        raise RecordError(f"{where}.total", "field required")
    return DropReport(source, stream, kind, group, total)  # type: ignore[arg-type]


def parse_body(payload: Any) -> Batch:
    """A decoded request body: a JSON array of records, or an object with
    `records` and, from the shims, `source` and `dropped` (drop totals)."""
    drops: list[DropReport] = []
    if isinstance(payload, dict):
        unknown = payload.keys() - _BODY_KEYS
        if unknown or "records" not in payload:
            raise RecordError(
                "body", "an object body needs 'records' (and may have 'source', 'dropped')"
            )
        raw_drops = payload.get("dropped", [])
        if raw_drops:
            source = _text(payload, "source", "body", required=True, limit=MAX_TEXT_LENGTH)
            if not isinstance(raw_drops, list):
                raise RecordError("dropped", "must be a list")
            drops = [_drop_report(d, i, source) for i, d in enumerate(raw_drops)]  # type: ignore[arg-type]
        payload = payload["records"]
    if not isinstance(payload, list):
        raise RecordError("body", 'must be a JSON array of records or {"records": [...]}')
    if not payload and not drops:
        raise RecordError("body", "no records")
    return Batch([validate_record(obj, i) for i, obj in enumerate(payload)], drops)


def parse_batch(payload: Any) -> list[Record]:
    """The records of a decoded request body (see parse_body)."""
    return parse_body(payload).records


def record_to_json(record: Sequence[Any]) -> dict[str, Any]:
    """The wire form of a record (a Record, or a tuple in FIELDS order),
    without absent optional fields."""
    out: dict[str, Any] = {}
    for key, value in zip(FIELDS, record, strict=True):
        if value is None or (key == "group" and not value):
            continue
        out[key] = value
    return out
