"""The record is defined once (msgtally.record); everything else that knows it
is held to that definition here and fails when it drifts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from msgtally.ingest.intake.schema import Consume, Produce
from msgtally.ingest.shim.tally import Tally
from msgtally.ingest.shim.wire import FIELDS as WIRE_FIELDS
from msgtally.ingest.shim.wire import record_to_json
from msgtally.oracle import Record as OracleRecord
from msgtally.reconcile import _machine
from msgtally.record import FIELD_NAMES, FIELDS, Field, table

DEFINITIONS = Path(__file__).resolve().parents[1] / "docs" / "definitions.md"


def _struct_fields(struct: type[msgspec.Struct]) -> dict[str, msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f for f in info.fields}


def _bounds(t: msgspec.inspect.Type) -> tuple[str, Any, Any, tuple[str, ...]]:
    """(type, low, high, choices) of a msgspec field type, optional or not."""
    if isinstance(t, msgspec.inspect.UnionType):
        (t,) = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
    if isinstance(t, msgspec.inspect.StrType):
        if t.pattern:  # ^[0-9a-fA-F]{32}$
            n = int(t.pattern.split("{")[1].split("}")[0])
            return "hex", n, n, ()
        return "text", t.min_length, t.max_length, ()
    if isinstance(t, msgspec.inspect.FloatType):
        return "number", t.ge, t.le, ()
    if isinstance(t, msgspec.inspect.IntType):
        return "integer", t.ge, t.le, ()
    assert isinstance(t, msgspec.inspect.LiteralType), t
    return "choice", 0, 0, tuple(sorted(t.values))


@pytest.mark.parametrize("field", FIELDS, ids=FIELD_NAMES)
def test_the_collector_s_types_are_the_definition(field: Field) -> None:
    for struct, kind in ((Produce, "produce"), (Consume, "consume")):
        fields = _struct_fields(struct)
        if field.name == "kind":  # the tag that tells the two structs apart
            assert struct.__struct_config__.tag == kind and kind in field.choices
            continue
        if field.required == "consume" and kind == "produce":
            assert field.name not in fields
            continue
        got = fields[field.name]
        assert got.required == (field.required in ("always", "consume"))
        typ, low, high, choices = _bounds(got.type)
        assert (typ, low, high) == (field.type, field.low, field.high)
        if field.type == "choice":  # a produce allows a subset of the outcomes
            assert set(choices) <= set(field.choices)
            assert kind == "produce" or set(choices) == set(field.choices)
        if field.default is not None:
            assert got.default == field.default
    assert set(_struct_fields(Produce)) | set(_struct_fields(Consume)) | {"kind"} == set(
        FIELD_NAMES
    )


def test_the_shim_s_tuples_and_json_follow_the_definition() -> None:
    assert WIRE_FIELDS == FIELD_NAMES
    tally = Tally("orders", registry=CollectorRegistry(), tracing=False, flush_interval=60)
    try:
        tally.produced("m1", ts=5.0)
        tally.consumed("m1", group="billing", ts=6.0, attempt=2, outcome="dead_letter")
        rows = list(tally.shipper._buffer)
    finally:
        tally.close(timeout=0.1)
    assert all(len(row) == len(FIELD_NAMES) for row in rows)
    produce, consume = (record_to_json(row) for row in rows)
    # What the collector's own decoder reads from them is what was reported.
    decoded = msgspec.json.decode(
        msgspec.json.encode([produce, consume]), type=list[Produce | Consume]
    )
    assert (decoded[0].message_id, decoded[0].ts, decoded[0].outcome) == ("m1", 5.0, "ok")
    assert isinstance(decoded[1], Consume)
    assert (decoded[1].group, decoded[1].attempt, decoded[1].outcome) == (
        "billing",
        2,
        "dead_letter",
    )
    assert decoded[0].producer == decoded[1].producer == tally.instance
    assert (decoded[0].seq, decoded[1].seq) == (1, 1)


def test_the_oracle_s_record_is_the_definition() -> None:
    assert OracleRecord._fields == FIELD_NAMES


def test_the_documented_table_is_the_definition(update_golden: bool) -> None:
    text = DEFINITIONS.read_text()
    start = text.index("| field | type | required | meaning |")
    end = text.index("\n\n", start) + 1
    if update_golden:
        DEFINITIONS.write_text(text[:start] + table() + text[end:])
        return
    assert text[start:end] == table(), "regenerate: pytest tests/test_record.py --update-golden"


def test_the_c_engine_reads_the_fields_of_the_definition() -> None:
    assert _machine.RECORD_FIELDS == FIELD_NAMES
