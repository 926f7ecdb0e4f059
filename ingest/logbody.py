"""The log's unit: one accepted request body, re-encoded for the engine.

msgpack [1, [record, ...]]: the version, then each validated record as the
map msgspec writes for it (fields at their default left out). The engine
(msgtally.reconcile._engine) reads it without creating a Python object per
record; `decode` gives the records back for tools and tests.
"""

from __future__ import annotations

import msgspec

from .schema import Record

VERSION = 1
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[int, list[Record]])


def encode(records: list[Record]) -> bytes:
    return _encoder.encode((VERSION, records))


def decode(body: bytes) -> list[Record]:
    version, records = _decoder.decode(body)
    if version != VERSION:
        raise ValueError(f"log body version {version}, this msgtally reads {VERSION}")
    return records
