"""One partition of the Kafka log: its state machine, its offsets, its commits.

A worker that is assigned the partition `take`s it: the partition's row in
the store gets a new epoch (the fence), the machine loads the partition's
checkpoint, and the topic is read again from the checkpoint's offset.
Messages below the committed offset are replayed (their figures are in the
store already: nothing is written); from the committed offset on, a
`commit` writes what changed (tally, histogram and sketch deltas, per-minute
and per-hour rows, verdict rows, records missing, the in-flight snapshot, and
the verdict rows each message loaded back for ids the machine had forgotten,
which a replay of that message installs: the store's may be later ones by then)
together with the new offset, for any number of a worker's partitions in one
transaction that first moves each partition's row `WHERE epoch = <ours>`:
once another worker has taken a partition, that matches nothing, and
nothing of that partition is written (it is fenced: its worker drops it).
Nothing is ever counted twice or lost across a move.

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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, select, update

from msgtally.store.db import upsert, write_tx
from msgtally.store.kafka_log import KafkaLogError, decode_message
from msgtally.store.tables import (
    MINUTE,
    announced_groups,
    partition_checkpoints,
    partition_loads,
    partitions,
)

from .. import _machine
from ..config import ReconcileConfig
from ..outputs import (
    InFlight,
    Pair,
    add_pairs,
    array_literal,
    casts,
    copy_verdicts,
    dump_loaded,
    load_verdicts,
    parse_copied,
    parse_loaded,
    replace_in_flight,
    write_errors,
    write_missing,
)

log_ = logging.getLogger(__name__)

# A scan of the partition's messages before an offset: (offset, raw message) in order.
Scan = Callable[[int, int], Iterable[bytes]]
# What the machine drained (pairs, verdict rows as COPY text, records missing, errors),
# at its clock.
Held = tuple[float, tuple[Any, bytes, Any, Any]]


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
        # The topic's end offset as the worker last saw it (its consumer's
        # watermark), recorded with each commit: the partition's backlog.
        self.log_end = 0
        # The oldest message the topic holds of the partition: (offset, receipt
        # time), (-1, None) while not known (msgtally.store.held).
        self.held: tuple[int, float | None] = (-1, None)
        self.rejected = 0  # messages whose body the machine refused, skipped
        self._changed = False
        self._backfilled = False  # since the last commit: it goes with a checkpoint
        # Groups met in records with no announcement in the log, since the last
        # commit: announced to the other partitions through the store.
        self._announce: list[tuple[str, str]] = []
        self._held: list[Held] = []  # drained since the last commit, written by the next
        self._sketches = _machine.Sketches()  # their sketch bins, summed
        # Verdict rows loaded back since the last commit, by the offset that loaded
        # them: the next commit records them for a replay (partition_loads).
        self._loads: list[tuple[int, list[tuple[Any, ...]]]] = []
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
                .returning(p.c.epoch, p.c.next_offset, p.c.clock, p.c.held_from, p.c.held_since)
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
        taken.held = (int(row.held_from), row.held_since)
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
        what is due at the partition's clock. Groups it names for the first time,
        those its body announces to every partition (version 4) and those of its
        consumes, are back-filled first (`expect`, with `scan`), as the single
        engine does; those of its consumes alone, which no collector announced
        in the log (written before collectors did), go to the other partitions
        through the store."""
        if offset < self.next_offset:
            return  # read twice (a seek back): applied already
        try:
            _request, received_at, body = decode_message(raw)
        except KafkaLogError as exc:  # not ours (something else wrote to the topic)
            self.rejected += 1
            log_.error("partition %d offset %d: message skipped: %s", self.part, offset, exc)
            self._moved(offset)
            return
        if offset == 0 and self.held[0] < 0:  # the topic's first: the oldest held until
            self.held = (0, received_at)  # retention deletes it (Worker._watermarks)
        clock = self.clock
        if received_at > clock:  # the clock only goes forward
            if received_at // MINUTE > clock // MINUTE:
                self._hold()  # judged in the minute that ends: its rows are that minute's
            self.clock = clock = received_at
        if body is None:  # a heartbeat: its clock alone
            self.core.advance(clock, clock)
        else:
            self._apply(offset, body, received_at, scan)
        self._moved(offset)

    def _apply(self, offset: int, body: bytes, received_at: float, scan: Scan) -> None:
        """Fold the body and judge at the partition's clock (one call to the machine:
        the body read once), after back-filling the groups it names first."""
        try:
            records, new, waiting = self.core.feed(body, received_at, self.clock)
            if new:
                if self.replaying:  # a back-fill commits a checkpoint: none to replay
                    raise RuntimeError(f"partition {self.part} offset {offset}: new groups "
                                       "in a replay; the store is inconsistent")  # fmt: skip
                self.expect(new, scan)
                logged = set(_machine.body_groups(body))
                self._announce += [g for g in new if g not in logged]
                records, new, waiting = self.core.feed(body, received_at, self.clock)
        except _machine.BodyError as exc:
            self.rejected += 1
            log_.error("partition %d offset %d: message skipped, the machine rejects its "
                       "body: %s", self.part, offset, exc)  # fmt: skip
            self.core.advance(self.clock, self.clock)  # its clock still counts
            return
        self.records += records
        if waiting:  # ids forgotten since: their verdict rows, as they were then
            self.core.install(self._verdicts(offset, self.core.deferred_keys()))
            self.core.apply_deferred()
            self.core.advance(self.clock, self.clock)

    def _hold(self) -> None:
        """Drain what the machine judged so far, at its clock, for the next commit to
        write: the per-minute rows get the minute each verdict was given in, as the
        single engine's tick at that time writes them, however many messages a
        commit covers."""
        if not self.replaying:  # a replay's figures are in the store already
            self._held.append((self.clock, self.core.drain_copy(self._sketches)))

    def _verdicts(self, offset: int, keys: Sequence[tuple[str, str]]) -> list[tuple[Any, ...]]:
        """The verdict rows of these forgotten ids, which the message at `offset`
        names: in a replay, those the message loaded when it was first applied
        (the store's rows may be later ones since); else the store's, then those
        judged since the last commit (not in the store yet), the latest of each,
        recorded for the next commit."""
        with self.store.connect() as conn:
            if offset < self.committed:
                loaded = conn.execute(
                    select(partition_loads.c.rows).where(
                        partition_loads.c.part == self.part, partition_loads.c.offset == offset
                    )
                ).scalar_one_or_none()
                if loaded is not None:
                    return parse_loaded(loaded)
                # Committed by an earlier version, without them: the store's.
            rows = {(r[0], r[1], r[2]): r for r in load_verdicts(conn, keys)}
        self._hold()
        wanted = set(keys)
        for _at, (_pairs, judged, _missing, _errors) in self._held:
            rows.update({(r[0], r[1], r[2]): r for r in parse_copied(judged, wanted)})
        installed = list(rows.values())
        if offset >= self.committed:
            self._loads.append((offset, installed))
        return installed

    def _moved(self, offset: int) -> None:
        self.next_offset = offset + 1
        if self.next_offset == self.committed:
            self.core.drain()  # the replay is over: its figures are in the store already
        self._changed = True

    def adopt(self, groups: Sequence[tuple[str, str]], scan: Scan) -> int:
        """Expect the groups among `groups` this machine does not expect yet (the
        store's: configured, or met on another partition); returns the verdicts owed."""
        expected = self.core.expected()
        new = [(s, g) for s, g in groups if g not in expected.get(s, ())]
        return self.expect(new, scan) if new else 0

    def expect(self, groups: Sequence[tuple[str, str]], scan: Scan) -> int:
        """Back-fill groups new to this machine: every id produced on their streams
        before is owed them, those in memory and those in the partition's messages
        before `next_offset` (`scan`). Committed by the partition's next commit,
        with a checkpoint, so that no replay has to do it again (until then, a
        replay stops short of it: the groups are new again after it). Returns
        the verdicts owed."""
        by_stream: dict[str, list[str]] = {}
        for stream, group in groups:
            by_stream.setdefault(stream, []).append(group)
        started = time.monotonic()
        for stream, names in by_stream.items():
            self.core.expect_groups(stream, names)
        scanned = 0
        if self.next_offset:  # one pass over the partition's messages for every stream
            for raw in scan(self.part, self.next_offset):
                body = decode_message(raw).body
                if body is not None:
                    for stream in by_stream:
                        self.core.backfill_scan(body, stream)
                scanned += 1
                if scanned % 1000 == 0:  # as the single engine's back-fill logs it
                    log_.info("partition %d: back-filling %d new group(s): %d of %d messages",
                              self.part, len(groups), scanned, self.next_offset)  # fmt: skip
        owed = sum(self.core.backfill_finish(s, names) for s, names in by_stream.items())
        log_.info("partition %d: %d new group(s) (%s): owed %d verdicts of earlier ids "
                  "(%d messages, %.1fs)", self.part, len(groups), describe(groups[:5]), owed,
                  scanned, time.monotonic() - started)  # fmt: skip
        self._changed = True
        self._backfilled = True
        return owed

    # -- committing ---------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return self._changed and not self.replaying

    def checkpoint_due(self, every: float) -> bool:
        return time.monotonic() - self._last_checkpoint > every

    def commit(self, *, checkpoint: bool = False) -> None:
        """Write what changed and the offset, fenced by the epoch; with the whole
        state too when `checkpoint`. Raises Fenced (nothing written) once another
        worker has taken the partition."""
        if commit([self], checkpoint=checkpoint):
            raise Fenced(f"partition {self.part}: another worker took it (epoch "
                         f"{self.epoch} is over)")  # fmt: skip

    def _drain(self, checkpoint: bool) -> Tick:
        """What the next commit writes: every drain held since the last, at its clock."""
        self._hold()
        held, self._held = self._held, []
        sketches, self._sketches = self._sketches, _machine.Sketches()
        loads, self._loads = self._loads, []
        missing: Counter[Any] = Counter()
        errors: Counter[Any] = Counter()
        for _at, (_pairs, _judged, declared, failed) in held:
            missing.update(declared)
            errors.update(failed)
        flight = self.core.in_flight()
        stats = self.core.stats()  # cumulative, kept by checkpoints: a replay goes on from them
        # A back-fill is committed with a checkpoint: a replay must not meet it.
        body = self.core.dumps() if checkpoint or self._backfilled else None
        return Tick(
            self, self.next_offset, self.clock, [(at, d[0]) for at, d in held], sketches,
            [d[1] for _at, d in held],  # in the order judged: the latest wins
            missing, errors, flight, body, tuple(self._announce), loads,
            stats["records"], stats["repeats"], max(self.log_end, self.next_offset), self.held,
        )  # fmt: skip

    def _committed(self, tick: Tick) -> None:
        self.committed = tick.offset
        self._changed = False
        self._backfilled = False
        self._announce.clear()
        if tick.checkpoint is not None:
            self._last_checkpoint = time.monotonic()


@dataclass(frozen=True)
class Tick:
    """What one partition's commit writes: drained from its machine at `offset`."""

    partition: Partition
    offset: int
    clock: float
    pairs: Sequence[tuple[float, Sequence[Pair]]]  # (the clock it was drained at, pairs)
    sketches: _machine.Sketches  # the pairs' sketch bins, summed (Machine.drain_copy)
    verdicts: Sequence[bytes]  # COPY text (Machine.drain_copy)
    missing: Mapping[tuple[str, str, str], int]
    errors: Mapping[tuple[str, str, str, str], int]
    flight: InFlight
    checkpoint: bytes | None
    announce: tuple[tuple[str, str], ...]  # groups for the other partitions, via the store
    loads: Sequence[tuple[int, Sequence[Any]]]  # (offset, verdict rows it loaded back)
    records: int  # the machine's records applied, and repeated, up to `offset`
    repeats: int
    log_end: int  # the topic's end offset as the worker saw it
    held: tuple[int, float | None]  # the oldest message held: (offset, receipt time)

    @property
    def part(self) -> int:
        return self.partition.part


def commit(
    parts: Sequence[Partition], *, checkpoint: bool | Callable[[Partition], bool] = False
) -> list[Partition]:
    """Commit what changed in each partition (not replaying) and its offset, in one
    transaction of their store, each fenced by its epoch: one statement per
    table for them all, as a partition's commit cost more in statements than
    in rows (bench/distributed.py). With its whole state too where `checkpoint`
    (a flag, or asked of each partition) or a back-fill is to commit, and the
    groups met in records with no announcement in the log announced to the
    other partitions through the store. Returns the partitions another worker
    has taken: nothing of theirs is written, the others' commits go in."""
    live = [p for p in parts if not p.replaying]
    if not live:
        return []
    store, config = live[0].store, live[0].config
    wants = checkpoint if callable(checkpoint) else (lambda _p: checkpoint)
    ticks = [p._drain(bool(wants(p))) for p in live]
    with write_tx(store) as conn:
        moved = _move(conn, ticks)
        ours = [t for t in ticks if t.part in moved]
        if ours:
            # Counters are sums: every partition's deltas go under the lowest
            # partition moved, whose row this transaction holds locked, so no
            # other commit writes those rows meanwhile; a batch adds one row
            # per key, not one per partition (PostgreSQL's cost is per row).
            shard = min(t.part for t in ours)
            sketches = _machine.Sketches()
            for t in ours:
                sketches.merge(t.sketches)
            add_pairs(conn, shard, [tick for t in ours for tick in t.pairs],
                      config.latency_buckets, sketches)  # fmt: skip
            copy_verdicts(conn, [text for t in ours for text in t.verdicts])
            for t in ours:
                write_missing(conn, t.missing, t.part)
                write_errors(conn, t.errors, t.part)
            replace_in_flight(conn, {t.part: t.flight for t in ours})
            groups = {g for t in ours for g in t.announce}
            if groups:
                _announce(conn, sorted(groups))
            _save_loads(conn, ours)
            _save_checkpoints(conn, [t for t in ours if t.checkpoint is not None])
    for t in ours:
        t.partition._committed(t)
    return [t.partition for t in ticks if t.part not in moved]


def _move(conn: Connection, ticks: Sequence[Tick]) -> set[int]:
    """The fence: each partition's row moved to its tick's offset and clock where
    its epoch is still ours (the row locked until the commit), with the engine's
    bookkeeping of it (msgtally.store.engine_facts, msgtally.store.held): the
    commit's time, the records applied and repeated, the topic's end, its oldest
    message held. Returns the partitions moved."""
    p = partitions
    now = time.time()
    if conn.dialect.name != "postgresql":
        return {t.part for t in ticks if conn.execute(
            update(p).where(p.c.part == t.part, p.c.epoch == t.partition.epoch)
            .values(next_offset=t.offset, clock=t.clock, committed_at=now, records=t.records,
                    repeats=t.repeats, log_end=t.log_end, held_from=t.held[0],
                    held_since=t.held[1])).rowcount == 1}  # fmt: skip
    columns: list[list[Any]] = [
        [t.part for t in ticks], [t.partition.epoch for t in ticks], [t.offset for t in ticks],
        [t.clock for t in ticks], [t.records for t in ticks], [t.repeats for t in ticks],
        [t.log_end for t in ticks], [t.held[0] for t in ticks], [t.held[1] for t in ticks],
    ]  # fmt: skip
    moved = conn.exec_driver_sql(
        "UPDATE partitions AS p SET "
        + ", ".join(f"{n} = u.{n}" for n in _MOVED[2:])
        + f", committed_at = %s FROM unnest({casts(conn, p, _MOVED)}) AS u({', '.join(_MOVED)}) "
        "WHERE p.part = u.part AND p.epoch = u.epoch RETURNING p.part",
        (now, *(array_literal(c, p.c[n].type) for c, n in zip(columns, _MOVED, strict=True))),
    )
    return {int(r[0]) for r in moved}


_MOVED = ("part", "epoch", "next_offset", "clock", "records", "repeats", "log_end",
          "held_from", "held_since")  # fmt: skip


def _announce(conn: Connection, groups: Sequence[tuple[str, str]]) -> None:
    stmt = upsert(conn, announced_groups).on_conflict_do_nothing(index_elements=["stream", "grp"])
    conn.execute(stmt, [{"stream": s, "grp": g} for s, g in groups])


def _save_loads(conn: Connection, ticks: Sequence[Tick]) -> None:
    """Record the verdict rows each message committed loaded back, for a replay of
    it; a checkpoint at the tick's offset leaves no message before it to replay:
    its partition's records go instead."""
    past = [t for t in ticks if t.checkpoint is not None]
    if past:  # a statement of one form whatever the partitions: compiled once
        pl = partition_loads
        conn.execute(
            delete(pl).where(pl.c.part == bindparam("p"), pl.c.offset < bindparam("o")),
            [{"p": t.part, "o": t.offset} for t in past],
        )
    rows = [{"part": t.part, "offset": offset, "rows": dump_loaded(loaded)}
            for t in ticks if t.checkpoint is None for offset, loaded in t.loads]  # fmt: skip
    if rows:
        conn.execute(partition_loads.insert(), rows)


def _save_checkpoints(conn: Connection, ticks: Sequence[Tick]) -> None:
    if not ticks:
        return
    c = partition_checkpoints
    stmt = upsert(conn, c)
    stmt = stmt.on_conflict_do_update(
        index_elements=["part"],
        set_={k: stmt.excluded[k] for k in ("next_offset", "clock", "taken_at", "body")},
    )
    now = time.time()
    conn.execute(stmt, [{"part": t.part, "next_offset": t.offset, "clock": t.clock,
                         "taken_at": now, "body": t.checkpoint} for t in ticks])  # fmt: skip


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
    """Groups every partition's machine is to expect from the store (the
    configuration's): each partition adopts them when it is taken."""
    if groups:
        with write_tx(store) as conn:
            _announce(conn, groups)


def describe(groups: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(g) for g in groups])
