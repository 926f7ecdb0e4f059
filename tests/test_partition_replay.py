"""A partition taken over replays the messages its last owner committed past the
checkpoint: the same state, from the same messages at the same clocks. Driven
without a broker (the messages are the test's), on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.schema import parse_batch
from msgtally.ingest.shim.wire import record_to_json
from msgtally.oracle import Record
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.partitioned.partition import Partition
from msgtally.store.db import write_tx
from msgtally.store.kafka_log import encode_message, heartbeat
from msgtally.store.tables import partition_checkpoints, partition_loads, partitions
from tests.harness import T, consume, produce, wipe
from tests.test_engine import snapshot


def _message(records: list[Record], at: float) -> bytes:
    body = logbody.encode(parse_batch([record_to_json(r) for r in records]))
    return encode_message(f"request at {at}", T + at, body)


# m consumed by g1 and never produced: judged unexpected at T + 401 and forgotten;
# then consumed by g2 and produced in one request, which loads m's verdict row back
# from the store (and commits g2's delivery over it).
MESSAGES = [
    _message([consume("s", "m", "g1", 1), consume("s", "x", "g2", 1)], 1),
    heartbeat(T + 401),
    _message([consume("s", "m", "g2", 801), produce("s", "m", 801)], 801),
    heartbeat(T + 3000),
]
CONFIG = ReconcileConfig(remember=0, expected_groups={"s": ("g9",)})


def _scan(_part: int, before: int) -> Any:
    return (raw for offset, raw in enumerate(MESSAGES) if offset < before)


def _first(store: Engine) -> Partition:
    """Partition 0 fresh, checkpointed after MESSAGES[:2], MESSAGES[2] committed past it."""
    wipe(store)
    with write_tx(store) as conn:
        conn.execute(
            partitions.insert().values(part=0, epoch=0, next_offset=0, clock=0.0, owner="")
        )
    part = Partition.take(store, CONFIG, 0, "first")
    part.expect([("s", "g9")], _scan)
    for offset in (0, 1):
        part.feed(offset, MESSAGES[offset], _scan)
    part.commit(checkpoint=True)
    part.feed(2, MESSAGES[2], _scan)
    part.commit()  # past the checkpoint: a new owner replays it
    return part


def _loads(store: Engine) -> list[tuple[int, int]]:
    with store.connect() as conn:
        pl = partition_loads
        return [(p, o) for p, o in conn.execute(select(pl.c.part, pl.c.offset))]


def _run(store: Engine, taken_over: bool) -> dict[str, Any]:
    part = _first(store)
    if taken_over:
        part = Partition.take(store, CONFIG, 0, "second")
        assert part.replaying and part.next_offset == 2
        part.feed(2, MESSAGES[2], _scan)
    part.feed(3, MESSAGES[3], _scan)
    part.commit()
    return snapshot(store)


def test_a_replayed_message_loads_a_forgotten_id_as_it_was_then(store: Engine) -> None:
    uninterrupted = _run(store, taken_over=False)
    assert uninterrupted["lost"] == {("s", "g9"): {"m"}}
    assert _run(store, taken_over=True) == uninterrupted


def test_the_rows_a_message_loaded_go_once_a_checkpoint_passes_it(store: Engine) -> None:
    part = _first(store)
    assert _loads(store) == [(0, 2)]  # m's row, loaded back by MESSAGES[2]
    part.feed(3, MESSAGES[3], _scan)
    part.commit()
    assert _loads(store) == [(0, 2)]  # a replay from the checkpoint still meets it
    part.commit(checkpoint=True)
    assert _loads(store) == []


def _announcing(records: list[Record], at: float, groups: list[tuple[str, str]]) -> bytes:
    """A slice announcing `groups` to every partition (version 4), as a collector
    sends the request that first names them."""
    parsed = parse_batch([record_to_json(r) for r in records]) if records else []
    body = logbody.encode_slice(parsed, [], [], groups)
    return encode_message(f"request at {at}", T + at, body)


# g1 delivers a; "late" is announced at T + 500 by a request with no record here
# (a owed it: lost), then again by another collector's request at T + 601 that
# consumes b for it (delivered): the second announcement is met again by a replay.
ANNOUNCED = [
    _message([produce("s", "a", 1), consume("s", "a", "g1", 2)], 1),
    heartbeat(T + 401),
    _announcing([], 500, [("s", "late")]),
    _message([produce("s", "b", 600)], 600),
    _announcing([consume("s", "b", "late", 601)], 601, [("s", "late")]),
    heartbeat(T + 3000),
]


def _announced_run(store: Engine, taken_over: bool) -> dict[str, Any]:
    wipe(store)
    with write_tx(store) as conn:
        conn.execute(
            partitions.insert().values(part=0, epoch=0, next_offset=0, clock=0.0, owner="")
        )

    def scan(_part: int, before: int) -> Any:
        return (raw for offset, raw in enumerate(ANNOUNCED) if offset < before)

    part = Partition.take(store, CONFIG, 0, "first")
    for offset in range(4):
        part.feed(offset, ANNOUNCED[offset], scan)
    part.commit()  # the back-fill at offset 2 goes with a checkpoint: no replay meets it
    with store.connect() as conn:
        saved = conn.execute(select(partition_checkpoints.c.next_offset)).scalar_one()
    assert saved == 4
    part.feed(4, ANNOUNCED[4], scan)
    part.commit()  # past the checkpoint: a new owner replays the second announcement
    if taken_over:
        part = Partition.take(store, CONFIG, 0, "second")
        assert part.replaying and part.next_offset == 4
        part.feed(4, ANNOUNCED[4], scan)  # "late" expected already: nothing back-filled
    part.feed(5, ANNOUNCED[5], scan)
    part.commit()
    assert part.core.expected()["s"] == ["g1", "late"]  # g9 (configured) is a worker's to adopt
    return snapshot(store)


def test_a_replay_meets_an_announcement_again_and_back_fills_nothing(store: Engine) -> None:
    uninterrupted = _announced_run(store, taken_over=False)
    late = uninterrupted["figures"][("s", "late")]
    assert (late["produced"], late["lost"], late["delivered"]) == (2, 1, 1)
    assert uninterrupted["lost"] == {("s", "late"): {"a"}, ("s", "g1"): {"b"}}
    assert _announced_run(store, taken_over=True) == uninterrupted
