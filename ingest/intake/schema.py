"""The delivery record contract, as the collector enforces it.

Decoding and validation happen in one pass inside msgspec (C): the types
below are the contract. A produce and a consume are two structs told apart
by `kind`, so that "a consume needs a group", "a produce has none" and
"dead_letter is a consume outcome" are type rules, not Python checks. Every
refusal names the field (`records[3].ts`) and the reason.

The same definitions bound every number to what any store can hold, so a
record is accepted or refused the same way whatever the store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Literal, NamedTuple, get_args

import msgspec
from msgspec import Meta, Struct

from msgtally.ingest.shim.announce import ACKS, MAX_BACKOFF, MAX_CONFIGS
from msgtally.record import (
    ERROR_CLASSES,
    MAX_ATTEMPT,
    MAX_DROP_TOTAL,
    MAX_ID_LENGTH,
    MAX_SEQ,
    MAX_TEXT_LENGTH,
    MAX_TS,
)
from msgtally.record import FIELD_NAMES as FIELDS

Text = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT_LENGTH)]
MessageId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Ts = Annotated[float, Meta(ge=0, le=MAX_TS)]
Attempt = Annotated[int, Meta(ge=1, le=MAX_ATTEMPT)]
Seq = Annotated[int, Meta(ge=0, le=MAX_SEQ)]
TraceId = Annotated[str, Meta(pattern="^[0-9a-fA-F]{32}$")]
SpanId = Annotated[str, Meta(pattern="^[0-9a-fA-F]{16}$")]
ErrorClass = Literal[
    "auth", "serialization", "timeout", "throttled", "unavailable", "poison", "other"
]
assert get_args(ErrorClass) == ERROR_CLASSES  # the vocabulary is msgtally.record's


class _Record(
    Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, tag_field="kind"
):
    stream: Text
    message_id: MessageId
    ts: Ts
    attempt: Attempt = 1
    producer: Text | None = None
    seq: Seq | None = None
    trace_id: TraceId | None = None
    span_id: SpanId | None = None
    record_id: Text | None = None
    error: ErrorClass | None = None


class Produce(_Record, tag="produce"):
    """A send: `ok` when the broker acknowledged it, `error` when indeterminate."""

    outcome: Literal["ok", "error"] = "ok"


class Consume(_Record, tag="consume"):
    """A delivery to a consumer group and the result of processing it."""

    group: Text
    outcome: Literal["ok", "error", "dead_letter"] = "ok"


Record = Produce | Consume


class DropReport(Struct, forbid_unknown_fields=True):
    """A shim's running total of records it dropped before sending them."""

    stream: Text
    kind: Literal["produce", "consume"]
    total: Annotated[int, Meta(ge=0, le=MAX_DROP_TOTAL)]
    group: Annotated[str, Meta(max_length=MAX_TEXT_LENGTH)] = ""


class SequenceMark(Struct, forbid_unknown_fields=True):
    """A high-water mark of one sequence (producer, stream, kind, group): every
    seq from 1 to `last` was given to a record the producer sent or dropped."""

    producer: Text
    stream: Text
    kind: Literal["produce", "consume"]
    last: Seq
    group: Annotated[str, Meta(max_length=MAX_TEXT_LENGTH)] = ""


Seconds = Annotated[float, Meta(ge=0, le=MAX_BACKOFF)]


class RetryConfigReport(Struct, forbid_unknown_fields=True):
    """How one consumer instance (the request's `source`) acks and retries a stream
    as a group (msgtally.ingest.shim.announce): acks before or after processing, or
    manual; max attempts (null: no limit); the redelivery backoff's base and cap
    in seconds; jitter; the dead-letter target (null: none)."""

    stream: Text
    group: Text
    acks: Literal["after", "before", "manual"]
    max_attempts: Attempt | None = None
    backoff_base: Seconds = 0.0
    backoff_cap: Seconds = 0.0
    jitter: bool = False
    dead_letter: Text | None = None


class Envelope(Struct, forbid_unknown_fields=True):
    """A shim's request: its records, its instance name, its drop totals, and,
    from a sender that numbers its records per sequence, its high-water marks;
    from one whose consumers announce them, their retry configurations."""

    records: list[Record]
    source: Text | None = None
    dropped: list[DropReport] = []
    sequences: list[SequenceMark] | None = None
    retry_configs: Annotated[list[RetryConfigReport], Meta(max_length=MAX_CONFIGS)] = []


class Batch(NamedTuple):
    records: list[Record]
    drops: list[DropReport]
    source: str | None
    # None: the sender does not number per sequence, its seqs are not checked.
    sequences: list[SequenceMark] | None = None
    retry_configs: Sequence[RetryConfigReport] = ()


class RecordError(ValueError):
    """A body that breaks the contract; `field` is a path like records[3].ts."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_decoder = msgspec.json.Decoder(list[Record] | Envelope)
_PATH = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`$")
_KIND = re.compile(r"^Invalid (?:enum )?value (.*)$")
_ENUM = re.compile(r"^Invalid enum value (.*)$")
_TYPES = {"str": "a string", "int": "an integer", "float": "a number", "object": "an object",
          "array": "an array", "null": "null", "bool": "a boolean"}  # fmt: skip
# msgspec's wording -> the contract's, for the refusals a sender meets most.
_REASONS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"^Expected `(\w+)`, got `(\w+)`$"),
     lambda m: f"must be {_TYPES.get(m[1], m[1])}, got {_TYPES.get(m[2], m[2])}"),
    (re.compile(r"^Expected `str` of length >= 1$"), lambda m: "must not be empty"),
    (re.compile(r"^Expected `str` of length <= (\d+)$"),
     lambda m: f"longer than {m[1]} characters"),
    (re.compile(r"^Expected `(?:int|float)` >= (\S+)$"),
     lambda m: f"must be at least {m[1].removesuffix('.0')}"),
    (re.compile(r"^Expected `(?:int|float)` <= (\S+)$"),
     lambda m: f"must be at most {m[1].removesuffix('.0')}"),
    (re.compile(r"^Expected `str` matching regex '\^\[0-9a-fA-F\]\{(\d+)\}\$'$"),
     lambda m: f"must be {m[1]} hexadecimal characters"),
    (re.compile(r"^Invalid enum value (.*)$"),
     lambda m: f"must be one of ok, error, dead_letter (a consume outcome), got {m[1]}"),
    (re.compile(r"^Number out of range$"), lambda m: "number out of range"),
    (re.compile(r"^Expected `array` of length <= (\d+)$"),
     lambda m: f"more than {m[1]} items"),
)  # fmt: skip


def _plain(reason: str) -> str:
    for pattern, say in _REASONS:
        match = pattern.match(reason)
        if match is not None:
            return say(match)
    return reason


def _located(exc: msgspec.ValidationError) -> RecordError:
    """msgspec's `reason - at $[3].ts` as records[3].ts and a plain reason."""
    match = _PATH.match(str(exc))
    path, reason = (match["path"], match["reason"]) if match else ("", str(exc))
    path = "records" + path if path.startswith("[") else path.lstrip(".")
    for pattern, plain in ((_MISSING, "field required"), (_UNKNOWN, "unknown field")):
        named = pattern.match(reason)
        if named is not None:
            if plain == "unknown field" and named["name"] == "group":
                plain = "only consume records carry a group"
            return RecordError(f"{path}.{named['name']}" if path else named["name"], plain)
    path = path or "body"
    kind = _KIND.match(reason) if path.endswith(".kind") else None
    if kind is not None:  # a record's tag, or the kind of a drop total or a mark
        return RecordError(path, f"must be 'produce' or 'consume', got {kind[1]}")
    acks = _KIND.match(reason) if path.endswith(".acks") else None
    if acks is not None:
        return RecordError(path, f"must be {', '.join(map(repr, ACKS))}, got {acks[1]}")
    bad_class = _ENUM.match(reason) if path.endswith(".error") else None
    if bad_class is not None:
        return RecordError(path, f"must be one of {', '.join(ERROR_CLASSES)}, got {bad_class[1]}")
    return RecordError(path, _plain(reason))


def parse_body(body: bytes) -> Batch:
    """A request body: a JSON array of records, or an object with `records`
    and, from the shims, `source`, `dropped` (drop totals) and `sequences`
    (high-water marks; their presence says the seqs are numbered per sequence).

    Raises RecordError for anything the contract refuses, msgspec.DecodeError
    for bytes that are not JSON.
    """
    try:
        payload = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _located(exc) from None
    if isinstance(payload, list):
        batch = Batch(payload, [], None)
    else:
        batch = Batch(
            payload.records, payload.dropped, payload.source, payload.sequences,
            payload.retry_configs,
        )  # fmt: skip
        if batch.drops and batch.source is None:
            raise RecordError("source", "field required with 'dropped'")
        if batch.retry_configs and batch.source is None:
            raise RecordError("source", "field required with 'retry_configs'")
        _check_marks(batch.sequences or [])
        _check_configs(batch.retry_configs)
    if not batch.records and not batch.drops and not batch.sequences and not batch.retry_configs:
        raise RecordError("body", "no records")
    if b"\\u0000" in body:  # NUL: no store can hold it in text (a rare, slow path)
        _refuse_nul(batch)
    # An error class says why a record failed: an `ok` record has none. Only a
    # body that names `error` (or escapes a key) can carry one: the slow path.
    if b'"error"' in body or b"\\u" in body:
        _refuse_class_of_ok(batch.records)
    return batch


def _refuse_class_of_ok(records: list[Record]) -> None:
    for i, record in enumerate(records):
        if record.error is not None and record.outcome == "ok":
            raise RecordError(
                f"records[{i}].error",
                f"an error class ({record.error}) on an ok record: only a record with "
                "outcome error or dead_letter has one",
            )


def _check_marks(marks: list[SequenceMark]) -> None:
    """A consume sequence is a group's, a produce sequence has none (as records)."""
    for i, mark in enumerate(marks):
        if mark.kind == "consume" and not mark.group:
            raise RecordError(f"sequences[{i}].group", "field required for a consume sequence")
        if mark.kind == "produce" and mark.group:
            raise RecordError(f"sequences[{i}].group", "only consume sequences carry a group")


def _check_configs(configs: Sequence[RetryConfigReport]) -> None:
    """A cap not below its base; one configuration per stream and group."""
    seen: set[tuple[str, str]] = set()
    for i, c in enumerate(configs):
        if c.backoff_cap < c.backoff_base:
            raise RecordError(
                f"retry_configs[{i}].backoff_cap",
                f"must be at least backoff_base ({c.backoff_base:g}), got {c.backoff_cap:g}",
            )
        if (c.stream, c.group) in seen:
            raise RecordError(
                f"retry_configs[{i}]", f"a second configuration for {c.stream!r} / {c.group!r}"
            )
        seen.add((c.stream, c.group))


def _refuse_nul(batch: Batch) -> None:
    for i, record in enumerate(batch.records):
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str) and "\x00" in value:
                raise RecordError(f"records[{i}].{name}", "contains a NUL character")
    for i, drop in enumerate(batch.drops):
        for name in ("stream", "group"):
            if "\x00" in getattr(drop, name):
                raise RecordError(f"dropped[{i}].{name}", "contains a NUL character")
    for i, mark in enumerate(batch.sequences or []):
        for name in ("producer", "stream", "group"):
            if "\x00" in getattr(mark, name):
                raise RecordError(f"sequences[{i}].{name}", "contains a NUL character")
    for i, c in enumerate(batch.retry_configs):
        for name in ("stream", "group", "dead_letter"):
            if "\x00" in (getattr(c, name) or ""):
                raise RecordError(f"retry_configs[{i}].{name}", "contains a NUL character")
    if batch.source is not None and "\x00" in batch.source:
        raise RecordError("source", "contains a NUL character")


def parse_batch(records: object) -> list[Record]:
    """Records from plain Python objects (dicts), validated like a body."""
    return parse_body(msgspec.json.encode(records)).records


def group_of(record: Record) -> str:
    """The consumer group of a record; "" for a produce."""
    return record.group if isinstance(record, Consume) else ""
