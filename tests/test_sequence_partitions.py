"""Senders' sequences on the Kafka log, without a broker: the partition rule,
the slices a request becomes (log body version 3), and machines fed the
slices, one per partition, finding exactly the holes one machine finds in
the whole requests at the same clocks."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Sequence
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.kafka_log import slices, split_sequences
from msgtally.ingest.intake.schema import Batch, Produce, parse_body
from msgtally.oracle import missing_records
from msgtally.reconcile import _machine
from msgtally.store.kafka_log import partition_of, sequence_partition
from tests.depth import examples
from tests.harness import T
from tests.partitioned_sequences import Numbered, envelope, numbered
from tests.partitioned_support import history


def batch(request: Numbered) -> Batch:
    return parse_body(json.dumps(envelope(request)).encode())


def test_the_sequence_rule_is_stable_and_ignores_nothing_of_the_key() -> None:
    # zlib's CRC-32 of producer NUL stream NUL kind NUL group: the same in every process.
    assert sequence_partition("p", "s", "consume", "g", 64) == zlib.crc32(b"p\0s\0consume\0g") % 64
    assert sequence_partition("p", "s", "produce", "", 64) == zlib.crc32(b"p\0s\0produce\0") % 64
    assert sequence_partition("p", "s", "produce", "", 1) == 0
    spread = {sequence_partition(f"p{i}", "s", "produce", "", 16) for i in range(64)}
    assert len(spread) > 8  # producers spread over the partitions


def test_a_numbered_request_becomes_slices_each_with_what_its_partition_owns() -> None:
    sent, tails = numbered(history(3, 60, T), seed=3, lose=0.1)
    request = batch(Numbered([r for q in sent[:3] for r in q.records], tails))
    records, marks = request.records, request.sequences
    assert marks is not None and len(marks) == len(tails)
    bodies = slices(records, marks, 5)
    logged = {p: logbody.decode(b) for p, b in bodies.items()}
    # The ids' records, each on its id's partition, every one once, in order.
    for p, got in logged.items():
        assert got.records == [r for r in records if partition_of(r.stream, r.message_id, 5) == p]
        assert got.marks is not None and got.runs is not None
    # Each sequence's seqs whole, in the records' order, on the partition that owns it,
    # and its mark there; nothing of a sequence anywhere else.
    runs: dict[tuple[str, str, str, str], list[int]] = {}
    for r in records:
        kind = "produce" if isinstance(r, Produce) else "consume"
        key = (r.producer or "", r.stream, kind, getattr(r, "group", ""))
        runs.setdefault(key, []).append(r.seq or 0)
    placed = {(p, tuple(run[:4])): run[4] for p, got in logged.items() for run in got.runs or ()}
    assert placed == {(sequence_partition(*k, 5), k): seqs for k, seqs in runs.items()}
    marked = {(p, m) for p, got in logged.items() for m in got.marks or ()}
    assert marked == {(sequence_partition(*logbody.mark_of(m)[:4], 5), logbody.mark_of(m))
                      for m in marks}  # fmt: skip
    assert len({p for p, _ in placed}) > 1
    # A sender that does not number: version 2 slices, no marks, its seqs never checked.
    plain = slices(records, None, 5)
    assert plain.keys() == {partition_of(r.stream, r.message_id, 5) for r in records}
    assert all(logbody.decode(b) == (logged[p].records, None, None, None)
               for p, b in plain.items())  # fmt: skip
    # Marks alone (a shim's last report): slices for their owners only.
    alone = split_sequences([], marks, 5)
    assert set(slices([], marks, 5)) == set(alone) == {p for p, _ in marked}


def fresh(settle: float) -> _machine.Machine:
    return _machine.Machine(300.0, settle, 60.0, [0.1, 1.0, 10.0])


def counts(machines: Sequence[_machine.Machine], out: dict[str, Any]) -> None:
    """Drain every machine into `out`: tallies per (stream, group), records missing."""
    for m in machines:
        pairs, _rows, missing, _errors = m.drain()
        for stream, group, tally, *_ in pairs:
            row = out["tallies"].setdefault((stream, group), {})
            for name, n in tally.items():
                row[name] = row.get(name, 0) + n
        for key, n in missing.items():
            out["missing"][key] = out["missing"].get(key, 0) + n


def feed(m: _machine.Machine, body: bytes, at: float) -> None:
    """A body applied as the engines do: the groups it names first expected (no id
    is forgotten in these short histories: nothing to scan for)."""
    new, rejected = m.screen([body])
    assert not rejected
    for stream, group in new:
        m.expect(stream, group)
    m.apply(body, at)


def run_single(requests: Sequence[Batch], clocks: Sequence[float], settle: float) -> dict[str, Any]:
    m, out = fresh(settle), {"tallies": {}, "missing": {}}
    for request, at in zip(requests, clocks, strict=True):
        feed(m, logbody.encode(request.records, request.sequences), at)
        m.advance(at, at)
        counts([m], out)
    m.advance(T + 10**6, T + 10**6)
    counts([m], out)
    return out


def run_partitioned(
    requests: Sequence[Batch], clocks: Sequence[float], settle: float, count: int, handover: int
) -> dict[str, Any]:
    """As the workers do: each partition's slice applied at the request's receipt
    time, every other partition's clock moved to it (a heartbeat), the machine
    judging after each message, a group new to one partition expected by all;
    at `handover`, every partition goes on from its checkpoint in a fresh machine."""
    machines, out = [fresh(settle) for _ in range(count)], {"tallies": {}, "missing": {}}
    for i, (request, at) in enumerate(zip(requests, clocks, strict=True)):
        if i == handover:
            for p, m in enumerate(machines):
                machines[p] = fresh(settle)
                machines[p].loads(m.dumps())
        bodies = slices(request.records, request.sequences, count)
        for p, body in bodies.items():  # a group one partition meets, every one expects
            for stream, group in machines[p].screen([body])[0]:
                for m in machines:
                    m.expect(stream, group)
        for p, m in enumerate(machines):
            if p in bodies:
                feed(m, bodies[p], at)
            m.advance(at, at)
        counts(machines, out)
    for m in machines:
        m.advance(T + 10**6, T + 10**6)
    counts(machines, out)
    return out


@settings(max_examples=examples(12, 25), deadline=None)
@given(
    seed=st.integers(0, 2**16),
    settle=st.sampled_from((0.0, 10.0)),
    count=st.integers(1, 7),
    swaps=st.integers(0, 12),
    handover=st.integers(0, 40),
)
def test_machines_of_the_slices_find_the_single_machines_holes(
    seed: int, settle: float, count: int, swaps: int, handover: int
) -> None:
    rng = random.Random(seed)
    sent, tails = numbered(history(seed, 200, T), seed=seed, lose=rng.choice((0.0, 0.05)))
    sent.append(Numbered([], tails))
    for _ in range(swaps):  # requests overtaking each other in flight: late fills
        i = rng.randrange(len(sent) - 2)
        sent[i], sent[i + 1] = sent[i + 1], sent[i]
    requests = [batch(q) for q in sent]
    clocks = [T + i for i in range(len(requests))]  # a second apart
    single = run_single(requests, clocks, settle)
    got = run_partitioned(requests, clocks, settle, count, handover)
    assert got == single
    records = [r for q in sent for r in q.records]
    if settle > 2.0:  # a request overtaken by one is a second late: within settle
        assert got["missing"] == missing_records(records, tails)


def test_a_slices_runs_move_the_sequences_alone_and_its_records_seqs_are_not_checked() -> None:
    produce = {"stream": "s", "kind": "produce", "ts": T, "producer": "p"}
    m = fresh(10.0)
    # Records numbered 1 and 9, no runs: not checked (their sequence is another partition's).
    records = [{**produce, "message_id": "a", "seq": 1}, {**produce, "message_id": "b", "seq": 9}]
    m.apply(msgspec.msgpack.encode((3, [], [], records)), T)
    m.advance(T + 10**4, T + 10**4)
    assert m.drain()[2] == {} and m.stats()["records"] == 2
    # Runs and a mark, no records: holes 2-3 and 6-7 of the numbering, never a record.
    mark, run = ("p", "s", "produce", "", 7), ("p", "s", "produce", "", [1, 4, 5])
    m.apply(logbody.encode_slice([], [mark], [run]), T + 1)
    m.advance(T + 2 * 10**4, T + 2 * 10**4)
    pairs, _, missing, _ = m.drain()
    assert missing == {("s", "produce", ""): 4}  # 2, 3, 6, 7
    assert pairs == [] and m.stats()["records"] == 2  # nothing joined as a record
