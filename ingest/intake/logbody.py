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

A request that names consumer groups its collector has not seen announced
(msgtally.ingest.intake.kafka_log) sends every partition a slice of version 4,
[4, groups, marks, runs, [record, ...]] (`encode_slice` with `groups`): a
version 3 slice, maybe without records, and the groups, each [stream, group].
The machine takes them as the new groups of the body, as it takes those of its
consumes: the engine back-fills them before the body applies, at its receipt
time, on every partition at once.

The machine (msgtally.reconcile._machine) reads it without creating a Python
object per record; `decode` gives the contents back for tools and tests.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from msgtally.ingest.intake.schema import Record, SequenceMark

VERSION = 2
SLICE_VERSION = 3
ANNOUNCING_VERSION = 4  # a slice with the groups every partition is to expect
Mark = tuple[str, str, str, str, int]  # producer, stream, kind, group, last
Run = tuple[str, str, str, str, list[int]]  # producer, stream, kind, group, seqs
Group = tuple[str, str]  # stream, group

_encoder = msgspec.msgpack.Encoder()
_parts = msgspec.msgpack.Decoder(list[msgspec.Raw])
_version = msgspec.msgpack.Decoder(int)
_records = msgspec.msgpack.Decoder(list[Record])
_marks = msgspec.msgpack.Decoder(list[Mark] | None)
_runs = msgspec.msgpack.Decoder(list[Run])
_groups = msgspec.msgpack.Decoder(list[Group])


class Logged(NamedTuple):
    records: list[Record]
    marks: list[Mark] | None
    runs: list[Run] | None = None  # a slice's (version 3 and 4)
    groups: list[Group] | None = None  # announced to every partition (version 4)


def encode(records: list[Record], sequences: list[SequenceMark] | None = None) -> bytes:
    marks = None
    if sequences is not None:
        marks = [mark_of(m) for m in sequences]
    return _encoder.encode((VERSION, marks, records))


def encode_slice(
    records: list[Record], marks: list[Mark], runs: list[Run], groups: list[Group] | None = None
) -> bytes:
    """A partition's slice of a request on the Kafka log: version 3, or 4 with the
    `groups` every partition is to expect before it."""
    if groups:
        return _encoder.encode((ANNOUNCING_VERSION, groups, marks, runs, records))
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
    if version == 4 and len(parts) == 5:
        return Logged(_records.decode(parts[4]), _marks.decode(parts[2]), _runs.decode(parts[3]),
                      _groups.decode(parts[1]))  # fmt: skip
    raise ValueError(f"log body version {version}, this msgtally reads 1, {VERSION}, "
                     f"{SLICE_VERSION} and {ANNOUNCING_VERSION}")  # fmt: skip

