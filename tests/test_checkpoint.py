"""Checkpoints: the format (version 3), its validation field by field, and the
versions main wrote before (mtmckpt2, mtmckpt1) still loading.

A checkpoint that fails any check raises CheckpointError naming the section
and the field, and leaves the machine empty and usable. The sanitizer step
(.ci/sanitize) runs this file against a build with AddressSanitizer.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest

from msgtally.reconcile import _machine
from tests.harness import T

MAIN = json.loads((Path(__file__).parent / "data" / "checkpoints_main.json").read_text())
HEADER = 32  # magic 8, version 4, sections 4, body length 8, checksum 8


def machine(fx: dict[str, Any]) -> _machine.Machine:
    return _machine.Machine(fx["deadline"], fx["settle"], fx["remember"], fx["buckets"])


def replayed(fx: dict[str, Any]) -> _machine.Machine:
    """A fresh machine through the history that made main's checkpoint."""
    core = machine(fx)
    for stream, seconds in fx["stream_deadlines"].items():
        core.set_deadline(stream, seconds)
    for body, at, now, watermark in fx["bodies"]:
        core.apply(bytes.fromhex(body), at)
        core.advance(now, watermark)
    core.drain()
    return core


def checksum(body: bytes) -> int:
    """The format's checksum: machine/internal.h hash_bytes, seed "mtmckpt3"."""
    mask = 2**64 - 1

    def mix(x: int) -> int:
        x ^= x >> 33
        x = (x * 0xFF51AFD7ED558CCD) & mask
        x ^= x >> 33
        x = (x * 0xC4CEB9FE1A85EC53) & mask
        return x ^ (x >> 33)

    n = len(body)
    h = 0x6D746D636B707433 ^ ((0x9E3779B97F4A7C15 * (n + 1)) & mask)
    whole = n - n % 8
    for (v,) in struct.iter_unpack("<Q", body[:whole]):
        h = ((h ^ v) * 0x9E3779B97F4A7C15) & mask
        h ^= h >> 29
    tail = int.from_bytes(body[whole:], "little")
    return mix(h ^ tail ^ (((n % 8) << 59) & mask))


def resealed(ck: bytes) -> bytes:
    """A checkpoint edited in its body, with its header made right again: what
    only the field checks can catch."""
    body = ck[HEADER:]
    return ck[:16] + struct.pack("<QQ", len(body), checksum(body)) + body


def sections(ck: bytes) -> dict[str, tuple[int, int]]:
    """Where each section's payload is: name -> (start, length)."""
    names = ["config", "streams", "groups", "stream info", "counters", "known", "entries",
             "compacts", "producers", "sequences"]  # fmt: skip
    out, at = {}, HEADER
    for name in names:
        _tag, _zero, n = struct.unpack_from("<IIQ", ck, at)
        out[name] = (at + 16, n)
        at += 16 + n
    return out


@functools.cache
def rich_checkpoint() -> bytes:
    """A checkpoint with every section in use: ids in flight and compact, known
    ids, sequences with open holes, an id with many fingerprints."""
    core = replayed(MAIN["v2"])
    one = {"stream": "orders", "kind": "consume", "message_id": "poison", "group": "billing"}
    records = [{**one, "ts": T + 950 + i, "attempt": i + 1, "outcome": "error"} for i in range(100)]
    marks = [["q", "orders", "produce", "", 9]]
    core.apply(msgspec.msgpack.encode((2, marks, records)), T + 950)
    core.drain()
    stats = core.stats()
    assert stats["in_memory"] and stats["compact"] and stats["known"] and stats["open_holes"]
    return core.dumps()


@pytest.fixture
def rich() -> bytes:
    return rich_checkpoint()


def test_the_format_round_trips(rich: bytes) -> None:
    assert rich[:8] == b"MTMCKPT\0"
    assert struct.unpack_from("<II", rich, 8) == (4, 10)
    again = machine(MAIN["v2"])
    again.loads(rich)
    assert again.dumps() == rich
    assert resealed(rich) == rich  # the checksum is the one the format says


def behaviour(core: _machine.Machine) -> list[Any]:
    """What a machine shows and, judged far ahead, writes (its counts, not the
    bytes it happens to hold them in)."""

    def counts() -> dict[str, int]:
        return {k: v for k, v in core.stats().items() if not k.endswith("_bytes")
                and k != "compacted"}  # fmt: skip

    shown = [counts(), core.expected(), core.in_flight()]
    core.advance(T + 10**7, T + 10**7)
    pairs, rows, missing, _errors = core.drain()
    return [*shown, sorted(pairs, key=repr), sorted(rows, key=repr), missing, counts()]


@pytest.mark.parametrize("version", ["v3", "v2", "v1"])
def test_checkpoints_earlier_versions_wrote_still_load(version: str) -> None:
    """Format 3, and mtmckpt2 and mtmckpt1 (written by main's engine as raw
    structs), load field by field into the state a fresh machine reaches from
    the same history: the same figures, now and judged later. (They did not
    keep when a compact id's groups had their delivery: its latency is not
    known again, so they are not the same bytes.)"""
    fx = MAIN[version]
    core = machine(fx)
    core.loads(bytes.fromhex(fx["checkpoint"]))
    assert behaviour(core) == behaviour(replayed(fx))


def test_a_compact_id_keeps_its_latency_for_a_later_verdict_row() -> None:
    """A plain delivery, compacted, then delivered again: the duplicate's verdict
    row carries the latency observed at the first delivery, through a checkpoint too."""
    for through_checkpoint in (False, True):
        core = _machine.Machine(5.0, 1.0, 60.0, [0.5, 2.0])
        produce = {"stream": "s", "kind": "produce", "message_id": "m", "ts": T}
        first = {"stream": "s", "kind": "consume", "message_id": "m", "ts": T + 0.25, "group": "g"}
        core.apply(msgspec.msgpack.encode((2, None, [produce, first])), T + 1)
        core.advance(T + 1, T + 1)
        core.drain()
        assert core.stats()["compact"] == 1
        if through_checkpoint:
            again = _machine.Machine(5.0, 1.0, 60.0, [0.5, 2.0])
            again.loads(core.dumps())
            core = again
        core.apply(msgspec.msgpack.encode((2, None, [{**first, "ts": T + 3}])), T + 3)
        core.advance(T + 20, T + 20)
        _pairs, rows, _missing, _errors = core.drain()
        assert len(rows) == 1 and 0.25 in rows[0], rows


def rejected(ck: bytes, match: str) -> None:
    core = machine(MAIN["v2"])
    with pytest.raises(_machine.CheckpointError, match=match):
        core.loads(ck)
        # Loaded when it should not have: used at once, so that under the
        # sanitizers (.ci/sanitize) a missing check shows as the memory error it is.
        core.expected()
        core.in_flight()
        core.advance(T + 10**7, T + 10**7)
        core.drain()
    stats = core.stats()  # empty, never half-loaded
    held = ("in_memory", "compact", "known", "sequences")
    assert [stats[k] for k in held] == [0, 0, 0, 0]
    assert core.expected() == {}
    core.loads(rich_checkpoint())  # and usable: a good checkpoint loads now


def test_a_truncated_checkpoint_is_refused(rich: bytes) -> None:
    for cut in (0, 7, 20, HEADER, HEADER + 5, len(rich) // 2, len(rich) - 1):
        rejected(rich[:cut], "checkpoint: ")


def test_one_byte_flipped_anywhere_is_refused(rich: bytes) -> None:
    for at in range(0, len(rich), max(1, len(rich) // 300)):
        damaged = bytearray(rich)
        damaged[at] ^= 0x40
        rejected(bytes(damaged), "checkpoint: ")


def test_a_future_version_is_refused_with_the_reason(rich: bytes) -> None:
    future = rich[:8] + struct.pack("<I", 5) + rich[12:]
    rejected(future, "header: field 'version' is 5, this machine reads 1 to 4")
    rejected(b"mtmckpt9" + rich[8:], "not a msgtally checkpoint")


def test_forty_bytes_flipped_are_refused(rich: bytes) -> None:
    damaged = bytearray(rich)
    for at in range(len(rich) // 2, len(rich) // 2 + 40):
        damaged[at] ^= 0xFF
    rejected(bytes(damaged), "field 'checksum' does not match")


def test_every_index_is_checked_against_what_was_loaded_before_it(rich: bytes) -> None:
    """Edits the checksum cannot catch (the header resealed): a group, a stream,
    a class, flags, counts and holes out of range, each named."""
    where = sections(rich)

    def patch(section: str, offset: int, fmt: str, value: int) -> bytes:
        start, _n = where[section]
        out = bytearray(rich)
        struct.pack_into(fmt, out, start + offset, value)
        return resealed(bytes(out))

    rejected(patch("config", 0, "<d", -1), "section 'config': field 'deadline'")
    rejected(patch("stream info", 4 + 8, "<I", 5000), "'stream info': stream 0: 5000 groups")
    rejected(patch("stream info", 4 + 12, "<I", 77), "section 'stream info': stream 0: group 77 of")
    # the first entry: t0 8, r0 8, p_max 4, sid 4, flags 1, nslots 2, idlen 2, nfp 8; then slots
    rejected(patch("entries", 8 + 16 + 4, "<I", 99), "section 'entries': entry 0: stream 99 of")
    rejected(patch("entries", 8 + 24, "<B", 0xFF), "section 'entries': entry 0: flags")
    rejected(patch("entries", 8 + 25, "<H", 5000), "section 'entries': entry 0: 5000 slots")
    slot = 8 + 37
    rejected(patch("entries", slot, "<H", 999), "entry 0: slot 0: field 'group'")
    rejected(patch("entries", slot + 2, "<B", 9), "entry 0: slot 0: field 'class'")
    rejected(patch("entries", slot + 3, "<B", 0x80), "entry 0: slot 0: field 'flags'")
    rejected(patch("entries", slot + 16, "<Q", 2**40), "entry 0: slot 0: field 'ok'")
    rejected(patch("compacts", 8 + 32, "<I", 50), "section 'compacts': compact id 0: field 'sid'")
    rejected(patch("compacts", 8 + 38, "<B", 200), "compact id 0: field 'ngroups'")
    rejected(patch("known", 0, "<Q", 2**40), "section 'known': 1099511627776 known ids")
    # the first sequence: pid 4, sid 4, gid 2, kind 1, hw 8, top 8, nholes 4, nshown 4
    rejected(patch("sequences", 16, "<I", 50), "section 'sequences': sequence 0: field 'pid'")
    rejected(patch("sequences", 16 + 10, "<B", 7), "sequence 0: field 'kind'")
    rejected(patch("sequences", 16 + 19, "<Q", 2**60), "sequence 0: field 'top'")
    rejected(patch("sequences", 16 + 31, "<I", 2**20), "sequence 0: field 'nshown'")
    rejected(patch("sequences", 16 + 27, "<I", 2**20), "sequence 0: field 'nholes'")
    rejected(patch("counters", 0, "<Q", 1)[:-1], "checkpoint: ")  # length no longer matches


def test_an_old_checkpoint_is_checked_field_by_field_too() -> None:
    ck = bytearray(bytes.fromhex(MAIN["v1"]["checkpoint"]))
    # mtmckpt1: magic, deadline, settle, remember, streams (n, len, "s"), groups (n, len, "g"),
    # stream 0 (deadline, n, gid)
    at = 8 + 24 + 4 + 4 + 1 + 4 + 4 + 1 + 8 + 4
    struct.pack_into("<I", ck, at, 5)
    rejected(bytes(ck), "section 'stream info': stream 0: group 5 of 1 groups")
