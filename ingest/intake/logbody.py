"""The log's unit: one accepted request body, re-encoded for the engine.

msgpack [2, marks, [record, ...]]: the version; the sender's sequence marks,
each [producer, stream, kind, group, last] (nil when the sender does not
number its records per sequence: their seqs are not checked); then each
validated record as the map msgspec writes for it (fields at their default
left out). Marks come first so that the engine knows, before the records,
whether to check their seqs. Version 1 bodies, [1, [record, ...]], written
before sequences were checked, stay in the log and are read as bodies
without marks.

On the Kafka log a request is split over partitions, and each partition's
slice of a numbering sender's request is [3, marks, runs, [record, ...]]
(`encode_slice`): the records of the ids the partition owns, whose seqs are
not checked there, and, for the sequences the partition owns, the runs (each
[producer, stream, kind, group, [seq, ...]]: the seqs of one sequence's
records in the request, in their order) and the marks (an array, maybe
empty). The machine applies runs and marks to its sequence state only, never
as records: a sender's numbering is checked whole on one partition, its
records' ids spread over all (msgtally.store.kafka_log).

The machine (msgtally.reconcile._machine) reads it without creating a Python
object per record; `decode` gives the contents back for tools and tests.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from msgtally.ingest.intake.schema import Record, SequenceMark

VERSION = 2
SLICE_VERSION = 3
Mark = tuple[str, str, str, str, int]  # producer, stream, kind, group, last
Run = tuple[str, str, str, str, list[int]]  # producer, stream, kind, group, seqs

_encoder = msgspec.msgpack.Encoder()
_parts = msgspec.msgpack.Decoder(list[msgspec.Raw])
_version = msgspec.msgpack.Decoder(int)
_records = msgspec.msgpack.Decoder(list[Record])
_marks = msgspec.msgpack.Decoder(list[Mark] | None)
_runs = msgspec.msgpack.Decoder(list[Run])


class Logged(NamedTuple):
    records: list[Record]
    marks: list[Mark] | None
    runs: list[Run] | None = None  # a slice's (version 3)


def encode(records: list[Record], sequences: list[SequenceMark] | None = None) -> bytes:
    marks = None
    if sequences is not None:
        marks = [mark_of(m) for m in sequences]
    return _encoder.encode((VERSION, marks, records))


def encode_slice(records: list[Record], marks: list[Mark], runs: list[Run]) -> bytes:
    """A partition's slice of a numbering sender's request (version 3)."""
    return _encoder.encode((SLICE_VERSION, marks, runs, records))


def mark_of(m: SequenceMark) -> Mark:
    return (m.producer, m.stream, m.kind, m.group, m.last)


def decode(body: bytes) -> Logged:
    parts = _parts.decode(body)
    version = _version.decode(parts[0]) if parts else None
    if version == 1 and len(parts) == 2:
        return Logged(_records.decode(parts[1]), None)
    if version == 2 and len(parts) == 3:
        return Logged(_records.decode(parts[2]), _marks.decode(parts[1]))
    if version == 3 and len(parts) == 4:
        return Logged(_records.decode(parts[3]), _marks.decode(parts[1]), _runs.decode(parts[2]))
    raise ValueError(
        f"log body version {version}, this msgtally reads 1, {VERSION} and {SLICE_VERSION}"
    )
