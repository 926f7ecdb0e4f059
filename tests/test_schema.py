"""The record contract on its own: what parse_body accepts, and how it names a refusal."""

from __future__ import annotations

import pytest

from msgtally.ingest.intake.schema import Consume, Produce, RecordError, group_of, parse_body


def refusal(body: bytes) -> tuple[str, str]:
    with pytest.raises(RecordError) as info:
        parse_body(body)
    return info.value.field, info.value.reason


def test_a_produce_and_a_consume_are_told_apart_by_kind() -> None:
    batch = parse_body(
        b'[{"kind":"produce","stream":"s","message_id":"m","ts":1},'
        b'{"kind":"consume","stream":"s","message_id":"m","ts":2,"group":"g","attempt":2}]'
    )
    produce, consume = batch.records
    assert isinstance(produce, Produce) and produce.outcome == "ok" and produce.attempt == 1
    assert isinstance(consume, Consume) and (consume.group, consume.attempt) == ("g", 2)
    assert (group_of(produce), group_of(consume)) == ("", "g")
    assert batch.source is None and batch.drops == []


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b"[]", "body", "no records"),
        (b'[{"kind":"consume","stream":"s","message_id":"m","ts":1}]',
         "records[0].group", "field required"),
        (b'[{"kind":"produce","stream":"s","message_id":"m","ts":1,"group":"g"}]',
         "records[0].group", "only consume records carry a group"),
        (b'[{"kind":"produce","stream":"","message_id":"m","ts":1}]',
         "records[0].stream", "must not be empty"),
        (b'[{"kind":"produce","stream":"s","message_id":"m","ts":-1}]',
         "records[0].ts", "must be at least 0"),
        (b'[{"kind":"produce","stream":"s","message_id":"m","ts":"1"}]',
         "records[0].ts", "must be a number, got a string"),
        (b'[{"kind":"send","stream":"s","message_id":"m","ts":1}]',
         "records[0].kind", "must be 'produce' or 'consume', got 'send'"),
        (b'[{"kind":"produce","stream":"s","message_id":"m","ts":1,"outcome":"dead_letter"}]',
         "records[0].outcome", "must be one of ok, error, dead_letter (a consume outcome), "
         "got 'dead_letter'"),
        (b'[{"kind":"produce","stream":"s","message_id":"m","ts":1,"trace_id":"xyz"}]',
         "records[0].trace_id", "must be 32 hexadecimal characters"),
        (b'[{"kind":"produce","stream":"s\\u0000","message_id":"m","ts":1}]',
         "records[0].stream", "contains a NUL character"),
        (b'{"records":[],"dropped":[{"stream":"s","kind":"produce","total":1}]}',
         "source", "field required with 'dropped'"),
        (b'[{"kind":"produce","stream":"s","message_id":"m","ts":1,"outcome":"error",'
         b'"error":"oops"}]', "records[0].error", "must be one of auth, serialization, "
         "timeout, throttled, unavailable, poison, other, got 'oops'"),
        # a key spelled with an escape is the same key
        (b'[{"kind":"produce","stream":"s","message_id":"m","ts":1,"\\u0065rror":"auth"}]',
         "records[0].error", "an error class (auth) on an ok record: only a record with "
         "outcome error or dead_letter has one"),
    ],
)  # fmt: skip
def test_every_refusal_names_its_field_and_reason(body: bytes, field: str, reason: str) -> None:
    assert refusal(body) == (field, reason)
