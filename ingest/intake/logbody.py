"""The log's unit: one accepted request body, re-encoded for the engine.

msgpack [2, marks, [record, ...]]: the version; the sender's sequence marks,
each [producer, stream, kind, group, last] (nil when the sender does not
number its records per sequence: their seqs are not checked); then each
validated record as the map msgspec writes for it (fields at their default
left out). Marks come first so that the engine knows, before the records,
whether to check their seqs. Version 1 bodies, [1, [record, ...]], written
before sequences were checked, stay in the log and are read as bodies
without marks.

The machine (msgtally.reconcile._machine) reads it without creating a Python
object per record; `decode` gives the contents back for tools and tests.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from msgtally.ingest.intake.schema import Record, SequenceMark

VERSION = 2
Mark = tuple[str, str, str, str, int]  # producer, stream, kind, group, last

_encoder = msgspec.msgpack.Encoder()
_parts = msgspec.msgpack.Decoder(list[msgspec.Raw])
_version = msgspec.msgpack.Decoder(int)
_records = msgspec.msgpack.Decoder(list[Record])
_marks = msgspec.msgpack.Decoder(list[Mark] | None)


class Logged(NamedTuple):
    records: list[Record]
    marks: list[Mark] | None


def encode(records: list[Record], sequences: list[SequenceMark] | None = None) -> bytes:
    marks = None
    if sequences is not None:
        marks = [(m.producer, m.stream, m.kind, m.group, m.last) for m in sequences]
    return _encoder.encode((VERSION, marks, records))


def decode(body: bytes) -> Logged:
    parts = _parts.decode(body)
    version = _version.decode(parts[0]) if parts else None
    if version == 1 and len(parts) == 2:
        return Logged(_records.decode(parts[1]), None)
    if version == 2 and len(parts) == 3:
        return Logged(_records.decode(parts[2]), _marks.decode(parts[1]))
    raise ValueError(f"log body version {version}, this msgtally reads 1 and {VERSION}")
