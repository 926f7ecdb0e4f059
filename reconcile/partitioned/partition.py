"""One partition of the Kafka log: its state machine, its offsets, its commits.

A worker that is assigned the partition `take`s it: the partition's row in
the store gets a new epoch (the fence), the machine loads the partition's
checkpoint, and the topic is read again from the checkpoint's offset.
Messages below the committed offset are replayed (their figures are in the
store already: nothing is written); from the committed offset on, each
`commit` writes what changed (tally, histogram and sketch deltas, per-minute
and per-hour rows, verdict rows, records missing, the in-flight snapshot)
together with the new offset, in one transaction that first moves the
partition's row `WHERE epoch = <ours>`: once another worker has taken the
partition, that matches nothing and the whole transaction is rolled back
(Fenced). Nothing is ever counted twice or lost across a move.

The clock is the log's: each message carries the receipt time the collector
gave it (heartbeats only that), the partition's clock is the latest of them,
and the machine judges after every message at that clock. The state after a
message depends on the messages before it alone, not on how they were
batched: a replay judges exactly as the first run did.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import Connection, Engine, select, update

from msgtally.store.db import upsert, write_tx
from msgtally.store.kafka_log import KafkaLogError, decode_message
from msgtally.store.tables import announced_groups, partition_checkpoints, partitions

from .. import _machine
from ..config import ReconcileConfig
from ..outputs import (
    load_verdicts,
    write_errors,
    write_in_flight,
    write_missing,
    write_pairs,
    write_verdicts,
)

log_ = logging.getLogger(__name__)

# A scan of the partition's messages before an offset: (offset, raw message) in order.
Scan = Callable[[int, int], Iterable[bytes]]


class Fenced(Exception):
    """Another worker has taken the partition: this one may commit nothing more."""


class Partition:
    """The machine of one partition, owned by one worker at a time (`take`)."""

    def __init__(
        self, store: Engine, config: ReconcileConfig, part: int, epoch: int, *,
        offset: int, clock: float, committed: int,
    ) -> None:  # fmt: skip
        self.store, self.config, self.part, self.epoch = store, config, part, epoch
        c = config
        self.core = _machine.Machine(c.deadline, c.settle, c.remember, c.latency_buckets)
        self.next_offset = offset  # the next message to apply
        self.committed = committed  # below it, the figures are in the store: replay
        self.clock = clock
        self.records = 0  # applied since taken (replays included)
        self.rejected = 0  # messages whose body the machine refused, skipped
        self._changed = False
        self._last_checkpoint = time.monotonic()

    # -- taking -----------------------------------------------------------------

    @classmethod
    def take(cls, store: Engine, config: ReconcileConfig, part: int, owner: str) -> Partition:
        """The partition, fenced for this worker: its checkpoint loaded, positioned
        at the checkpoint's offset (the worker reads the topic from `next_offset`)."""
        p = partitions
        with write_tx(store) as conn:
            row = conn.execute(
                update(p).where(p.c.part == part).values(epoch=p.c.epoch + 1, owner=owner)
                .returning(p.c.epoch, p.c.next_offset, p.c.clock)
            ).one_or_none()  # fmt: skip
            if row is None:
                raise RuntimeError(f"partition {part} is not registered in the store")
            saved = conn.execute(
                select(partition_checkpoints).where(partition_checkpoints.c.part == part)
            ).first()
        committed = int(row.next_offset)
        if saved is None:
            if committed:
                raise RuntimeError(f"partition {part} has an offset but no checkpoint")
            taken = cls(store, config, part, int(row.epoch), offset=0, clock=0.0, committed=0)
        else:
            taken = cls(
                store, config, part, int(row.epoch), offset=int(saved.next_offset),
                clock=float(saved.clock), committed=committed,
            )  # fmt: skip
            taken.core.loads(saved.body)  # into a fresh machine: before any setting
        taken._configure()
        return taken

    def _configure(self) -> None:
        c = self.config
        self.core.configure(c.deadline, c.settle, c.remember)
        for stream, seconds in c.stream_deadlines.items():
            self.core.set_deadline(stream, seconds)

    @property
    def replaying(self) -> bool:
        return self.next_offset < self.committed

    # -- messages ---------------------------------------------------------------

    def feed(self, offset: int, raw: bytes, scan: Scan) -> None:
        """Apply the message at `offset` (the next one: offsets only grow) and judge
        what is due at the partition's clock. Groups it names for the first time
        are back-filled first (`expect`, with `scan`), as the single engine does."""
        if offset < self.next_offset:
            return  # read twice (a seek back): applied already
        try:
            message = decode_message(raw)
        except KafkaLogError as exc:  # not ours (something else wrote to the topic)
            self.rejected += 1
            log_.error("partition %d offset %d: message skipped: %s", self.part, offset, exc)
            self._moved(offset)
            return
        self.clock = max(self.clock, message.received_at)
        if message.body is not None:
            new, rejected = self.core.screen([message.body])
            if rejected:
                self.rejected += 1
                log_.error("partition %d offset %d: message skipped, the machine rejects its "
                           "body: %s", self.part, offset, rejected[0][1])  # fmt: skip
            else:
                if new:
                    if self.replaying:  # a back-fill commits a checkpoint: none to replay
                        raise RuntimeError(f"partition {self.part} offset {offset}: new "
                                           "groups in a replay; the store is inconsistent")
                    self.expect(new, scan)
                self.records += self.core.apply(message.body, message.received_at)
                keys = self.core.deferred_keys()
                if keys:  # ids forgotten since: their verdict rows, from the store
                    with self.store.connect() as conn:
                        self.core.install(load_verdicts(conn, keys))
                    self.core.apply_deferred()
        self.core.advance(self.clock, self.clock)
        self._moved(offset)

    def _moved(self, offset: int) -> None:
        self.next_offset = offset + 1
        if self.next_offset == self.committed:
            self.core.drain()  # the replay is over: its figures are in the store already
        self._changed = True

    def expect(self, groups: Sequence[tuple[str, str]], scan: Scan) -> int:
        """Back-fill groups new to this machine: every id produced on their streams
        before is owed them, those in memory and those in the partition's messages
        before `next_offset` (`scan`). Committed at once, with a checkpoint, so
        that no replay has to do it again. Returns the verdicts owed."""
        by_stream: dict[str, list[str]] = {}
        for stream, group in groups:
            by_stream.setdefault(stream, []).append(group)
        owed = 0
        for stream, names in by_stream.items():  # the machine back-fills one stream at a time
            self.core.expect_groups(stream, names)
            if self.next_offset:
                for raw in scan(self.part, self.next_offset):
                    body = decode_message(raw).body
                    if body is not None:
                        self.core.backfill_scan(body, stream)
            owed += self.core.backfill_finish(stream, names)
        self._changed = True
        self.commit(checkpoint=True, announce=groups)
        return owed

    # -- committing ---------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return self._changed and not self.replaying

    def checkpoint_due(self, every: float) -> bool:
        return time.monotonic() - self._last_checkpoint > every

    def commit(
        self, *, checkpoint: bool = False, announce: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Write what changed and the offset, fenced by the epoch; with the whole
        state too when `checkpoint`. Raises Fenced (nothing written) once another
        worker has taken the partition."""
        if self.replaying:
            return
        pairs, rows, missing, errors = self.core.drain()
        flight = self.core.in_flight()
        body = self.core.dumps() if checkpoint else None
        p = partitions
        with write_tx(self.store) as conn:
            moved = conn.execute(
                update(p).where(p.c.part == self.part, p.c.epoch == self.epoch)
                .values(next_offset=self.next_offset, clock=self.clock)
            ).rowcount  # fmt: skip
            if moved != 1:
                raise Fenced(f"partition {self.part}: another worker took it (epoch "
                             f"{self.epoch} is over)")  # fmt: skip
            write_pairs(conn, pairs, self.config.latency_buckets, self.clock, self.part)
            write_verdicts(conn, rows)
            write_missing(conn, missing, self.part)
            write_errors(conn, errors, self.part)
            write_in_flight(conn, flight, self.part)
            if announce:
                _announce(conn, announce)
            if body is not None:
                _save_checkpoint(conn, self.part, self.next_offset, self.clock, body)
        self.committed = self.next_offset
        self._changed = False
        if body is not None:
            self._last_checkpoint = time.monotonic()


def _announce(conn: Connection, groups: Sequence[tuple[str, str]]) -> None:
    stmt = upsert(conn, announced_groups).on_conflict_do_nothing(index_elements=["stream", "grp"])
    conn.execute(stmt, [{"stream": s, "grp": g} for s, g in groups])


def _save_checkpoint(conn: Connection, part: int, offset: int, clock: float, body: bytes) -> None:
    c = partition_checkpoints
    stmt = upsert(conn, c).values(
        part=part, next_offset=offset, clock=clock, taken_at=time.time(), body=body
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["part"],
            set_={k: stmt.excluded[k] for k in ("next_offset", "clock", "taken_at", "body")},
        )
    )


def checkpoint_offsets(store: Engine) -> dict[int, tuple[int, int]]:
    """Per partition the store has figures of: (its checkpoint's offset, 0 without
    one; the offset committed up to)."""
    p, c = partitions, partition_checkpoints
    with store.connect() as conn:
        rows = conn.execute(
            select(p.c.part, c.c.next_offset, p.c.next_offset)
            .select_from(p.outerjoin(c, c.c.part == p.c.part))
        )  # fmt: skip
        return {
            int(part): (int(saved or 0), int(committed))
            for part, saved, committed in rows
            if saved is not None or committed
        }


def read_announced(store: Engine) -> list[tuple[str, str]]:
    with store.connect() as conn:
        rows = conn.execute(select(announced_groups.c.stream, announced_groups.c.grp))
        return [(s, g) for s, g in rows]


def announce(store: Engine, groups: Sequence[tuple[str, str]]) -> None:
    """Groups every partition's machine is to expect (from the configuration)."""
    if groups:
        with write_tx(store) as conn:
            _announce(conn, groups)


def describe(groups: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(g) for g in groups])
