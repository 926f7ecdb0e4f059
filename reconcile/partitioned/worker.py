"""`msgtally worker`: the engine over the Kafka log, one machine per partition.

Workers join one consumer group on the log's topic; Kafka's group protocol
gives each the partitions it owns and moves them when a worker comes, goes
or stalls. Offsets are not committed to Kafka: they live in the store,
committed with the figures (msgtally.reconcile.partitioned.partition), and a
worker that is assigned a partition seeks to its checkpoint's offset.

The loop: poll a batch, feed each message to its partition's machine, then
commit every partition that changed, all in one transaction, `commit_every`
seconds after the last commit ended. While the worker is behind (a poll
comes back full), the wait is COMMIT_SHARE times as long as the last commit
took, if that is longer (up to MAX_COMMIT_EVERY): under load, commits take
at most a fifth of the worker's time, and fewer, fuller ticks cost the store
less per record (their rows are per pair and latency bin, not per record).
Each partition's checkpoint goes with its commit every `checkpoint_every`.
A consumer group new in a request comes announced to every partition in the
log (msgtally.ingest.intake.kafka_log), and each machine back-fills it at
that message; the groups in the store (announced_groups: the configured
ones, and those a partition met in records no collector announced) every
partition adopts when it is taken and at its next look.

The store or the broker may go away (PostgreSQL restarted, a failover, the
broker unreachable): the worker does not die. Partitions whose commit,
look-up or taking fails on the store, or whose back-fill cannot read the
topic, are set aside, their messages skipped, and taken again from the store
(the checkpoint, the topic read again from the checkpoint's offset), tried
every STORE_RETRY_EVERY seconds. Commits are transactions: a commit lost
with the store is either in it whole or not at all.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from msgtally.store.kafka_log import KafkaLog, KafkaLogError, decode_message

from ..config import ReconcileConfig
from .partition import Partition, announce, checkpoint_offsets, commit, read_announced

log_ = logging.getLogger(__name__)

DEFAULT_COMMIT_EVERY = 0.5  # seconds between a partition's commits
DEFAULT_CHECKPOINT_EVERY = 60.0  # seconds between a partition's checkpoints
DEFAULT_SESSION_TIMEOUT = 10.0  # seconds without the worker's heartbeats before its partitions move
ANNOUNCE_EVERY = 1.0  # seconds between looks at the groups announced in the store
POLL_MAX = 2000  # messages a poll takes; a full poll means the worker is behind
COMMIT_SHARE = 4.0  # behind, the wait after a commit: at least this many times its duration
MAX_COMMIT_EVERY = 10.0  # seconds: the longest that wait grows to under load
STORE_RETRY_EVERY = 1.0  # seconds between tries to take set-aside partitions again
HELD_RETRY_EVERY = 60.0  # seconds between reads of partitions' oldest messages held
HELD_READ = 5.0  # seconds such a read waits for the partitions' first messages


class Worker:
    """One worker process's consumer and partitions; `run` until `stop`."""

    def __init__(
        self, store: Engine, log: KafkaLog, config: ReconcileConfig, *,
        commit_every: float = DEFAULT_COMMIT_EVERY,
        checkpoint_every: float = DEFAULT_CHECKPOINT_EVERY,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        group_id: str | None = None,
        leave_group: bool = False,
    ) -> None:  # fmt: skip
        from confluent_kafka import Consumer  # the `kafka` extra

        self.store, self.log, self.config = store, log, config
        self.commit_every, self.checkpoint_every = commit_every, checkpoint_every
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.leave_group = leave_group
        self.parts: dict[int, Partition] = {}
        self._stop = threading.Event()
        self._last_commit = time.monotonic()  # when the last commit ended
        self._commit_wait = commit_every  # the wait from there to the next, when behind
        self._behind = False
        self._last_announced = 0.0
        # Assigned partitions without a machine: the store failed them; taken again later.
        self._aside: set[int] = set()
        self._last_retake = 0.0
        self._store_down = False
        self._held_tried = -HELD_RETRY_EVERY  # the last read of oldest messages held
        # An exception in a rebalance callback cannot cross librdkafka (consume would
        # raise a SystemError): kept here and raised by `step` once consume returns.
        self._failure: BaseException | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": log.bootstrap,
                "group.id": group_id or f"msgtally-workers.{log.topic}",
                "enable.auto.commit": False,  # offsets live in the store
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(session_timeout * 1000),
                "heartbeat.interval.ms": max(100, int(session_timeout * 1000) // 5),
                "max.poll.interval.ms": max(int(session_timeout * 1000) + 1000, 60_000),
                "client.id": self.owner,
            }
        )
        # The configuration's expected groups: announced to every partition.
        announce(store, [(s, g) for s, gs in config.expected_groups.items() for g in gs])

    # -- life -------------------------------------------------------------------

    def check_replayable(self, count: int, timeout: float = 15.0) -> None:
        """Refuse (KafkaLogError) a store whose partitions the topic cannot rebuild:
        a checkpoint older than the topic's oldest offset (retention deleted what
        its replay needs), or offsets committed past the topic's end (the topic is
        not the one the store was filled from: recreated, or a broker that lost its
        log). Partitions the store has nothing of yet are not checked."""
        from confluent_kafka import KafkaException, TopicPartition

        saved = checkpoint_offsets(self.store)
        for part, (checkpoint, committed) in sorted(saved.items()):
            if part >= count:
                continue
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.log.topic, part), timeout=timeout
                )
            except KafkaException as exc:
                raise KafkaLogError(f"{self.log}: the brokers do not answer ({exc})") from None
            refusal = unreplayable(part, checkpoint, committed, int(low), int(high))
            if refusal is not None:
                raise KafkaLogError(f"{self.log}: {refusal}")

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Until `stop`; then a last fenced commit of every partition, with its
        checkpoint. With `leave_group` the consumer then leaves the group (its
        partitions move at once); without, it stays a member until its session
        times out (the process exits without closing it: `msgtally worker`), as a
        killed worker's does. Tansu 0.6.0 can keep a member that left named group
        leader, and the others then wait for an assignment nobody sends; a
        session that lapses is handled as a crash, everywhere."""
        # Every object made so far (modules, the store's and the driver's) is left
        # out of the collector's passes: each drain makes many short-lived
        # containers, and full passes over the rest cost ~5% of a busy worker.
        gc.freeze()
        self._consumer.subscribe(
            [self.log.topic], on_assign=self._assigned, on_revoke=self._revoked,
            on_lost=self._lost,
        )  # fmt: skip
        try:
            while not self._stop.is_set():
                self.step()
            self._commit_all(checkpoint=True)
        finally:
            if self.leave_group:
                self._consumer.close()

    def step(self, timeout: float = 0.2) -> int:
        """One poll, fed and committed; returns the messages fed."""
        batch = self._consumer.consume(POLL_MAX, timeout)
        self._behind = len(batch) == POLL_MAX  # more is waiting: under load
        fed = self.feed(batch)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        self._commit_due()
        if time.monotonic() - self._last_announced > ANNOUNCE_EVERY:
            self._adopt_announced()
        if self._aside and time.monotonic() - self._last_retake > STORE_RETRY_EVERY:
            self._retake_aside()
        return fed

    def feed(self, batch: list[Any]) -> int:
        """A poll's messages, each to its partition's machine; returns the messages fed."""
        fed = 0
        parts, scan = self.parts, self._scan  # looked up once a poll, not once a message
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaLogError(f"{self.log}: {err.str()}")
                log_.warning("%s: %s", self.log, err.str())
                continue
            part = parts.get(msg.partition() or 0)
            if part is None:
                continue  # not ours (any more): its new owner reads it
            try:
                part.feed(_offset(msg), msg.value() or b"", scan)
            except (SQLAlchemyError, KafkaLogError) as exc:  # a back-fill's scan: the topic
                self._set_aside(part.part, exc)
                continue
            fed += 1
        return fed

    # -- assignment -------------------------------------------------------------

    def _assigned(self, consumer: Any, assigned: list[Any]) -> None:
        try:
            for tp in assigned:
                try:
                    part = self._take(tp.partition, "taken")
                except SQLAlchemyError as exc:  # read from wherever; sought when taken
                    self._set_aside(tp.partition, exc)
                    continue
                tp.offset = part.next_offset
            consumer.assign(assigned)
        except BaseException as exc:
            self._failure = exc

    def _take(self, number: int, how: str) -> Partition:
        """Partition.take, the machine then this worker's: the groups announced so
        far expected before its first message, as the single engine expects the
        configured groups before its first tick (each id judged for them when it
        is due, not at the next adoption after a backlog). Raises SQLAlchemyError
        (nothing taken) when the store fails."""
        part = Partition.take(self.store, self.config, number, self.owner)
        groups = read_announced(self.store)
        self.parts[number] = part
        self._adopt(part, groups)
        log_.info("partition %d %s (epoch %d): from offset %d, %d to replay", number, how,
                  part.epoch, part.next_offset, part.committed - part.next_offset)  # fmt: skip
        return part

    def _revoked(self, consumer: Any, revoked: list[Any]) -> None:
        try:
            parts = []
            for tp in revoked:
                self._aside.discard(tp.partition)
                part = self.parts.pop(tp.partition, None)
                if part is not None:
                    parts.append(part)
            try:
                for part in commit(parts, checkpoint=True):
                    log_.info("partition %d revoked: another worker took it first", part.part)
            except Exception:
                log_.exception("partitions %s: last commit failed", _numbers(revoked))
            log_.info("partitions revoked: %s", _numbers(revoked))
            consumer.unassign()
        except BaseException as exc:
            self._failure = exc

    def _lost(self, consumer: Any, lost: list[Any]) -> None:
        try:
            for tp in lost:  # another worker may own it already: commit nothing
                self._aside.discard(tp.partition)
                self.parts.pop(tp.partition, None)
            log_.warning("partitions lost (the group went on without this worker): %s; "
                         "nothing more committed on them", _numbers(lost))  # fmt: skip
            consumer.unassign()
        except BaseException as exc:
            self._failure = exc

    def _drop(self, part: Partition, why: str) -> None:
        log_.warning("partition %d dropped: %s", part.part, why)
        self.parts.pop(part.part, None)

    def _set_aside(self, number: int, exc: BaseException) -> None:
        """The partition's machine is gone (the store or the topic failed it): its
        messages are skipped until `_retake_aside` takes it again from the store."""
        self.parts.pop(number, None)
        self._aside.add(number)
        if isinstance(exc, KafkaLogError):
            log_.warning("partition %d set aside, taken again from the store: %s", number,
                         _first_line(exc))  # fmt: skip
        elif not self._store_down:
            self._store_down = True
            log_.warning("the store failed (%s): partition %d set aside, taken again from "
                         "the store once it answers", _first_line(exc), number)  # fmt: skip

    def _retake_aside(self) -> None:
        """Set-aside partitions: the machine again from the store, the topic again
        from the checkpoint's offset."""
        from confluent_kafka import TopicPartition

        self._last_retake = time.monotonic()
        for number in sorted(self._aside):
            try:
                fresh = self._take(number, "taken again")
            except SQLAlchemyError:
                return  # still away: the next try in STORE_RETRY_EVERY
            if number not in self.parts:
                continue  # set aside again (its back-fill could not read the topic)
            self._aside.discard(number)
            self._consumer.seek(TopicPartition(self.log.topic, number, fresh.next_offset))
        if self._store_down:
            self._store_down = False
            log_.warning("the store answers again: every partition taken again")

    # -- commits ----------------------------------------------------------------

    def _commit_due(self) -> None:
        """Every partition that changed, in one transaction, once the wait since
        the last commit is over; the next wait from its duration."""
        started = time.monotonic()
        wait = self._commit_wait if self._behind else self.commit_every
        if started - self._last_commit < wait:
            return
        every = self.checkpoint_every
        self._commit([p for p in self.parts.values() if p.changed],
                     checkpoint=lambda p: p.checkpoint_due(every))  # fmt: skip
        self._last_commit = time.monotonic()
        took = self._last_commit - started
        longest = max(self.commit_every, MAX_COMMIT_EVERY)
        self._commit_wait = min(max(self.commit_every, COMMIT_SHARE * took), longest)

    def _commit_all(self, *, checkpoint: bool) -> None:
        self._commit(list(self.parts.values()), checkpoint=checkpoint)

    def _commit(
        self, parts: list[Partition], *, checkpoint: bool | Callable[[Partition], bool]
    ) -> None:
        """One transaction for `parts`; a fenced partition (nothing of it written) is
        dropped. A commit that fails is not in the store at all (a transaction):
        every partition in it is set aside, taken again from the store."""
        if not parts:
            return
        self._watermarks(parts)
        try:
            fenced = commit(parts, checkpoint=checkpoint)
        except Exception as exc:
            if not isinstance(exc, SQLAlchemyError):
                log_.exception("partitions %s: commit failed; taken again from the store",
                               ",".join(str(p.part) for p in parts))  # fmt: skip
            for part in parts:
                self._set_aside(part.part, exc)
            return
        for part in fenced:
            self._drop(part, f"another worker took it (epoch {part.epoch} is over)")

    def _watermarks(self, parts: list[Partition]) -> None:
        """Each partition's topic end as the consumer's last fetch had it (its
        watermarks, cached: no request), for its commit to record; and its oldest
        message held, read from the topic where it is not known yet or retention
        deleted it (the low watermark moved past it): rarely, one read for all."""
        from confluent_kafka import TopicPartition

        stale = []
        for part in parts:
            marks = self._consumer.get_watermark_offsets(
                TopicPartition(self.log.topic, part.part), cached=True
            )
            low, high = (int(marks[0]), int(marks[1])) if marks else (-1, -1)
            part.log_end = max(0, high)
            if 0 <= low < high and part.held[0] < low:
                stale.append(part)
        if stale and time.monotonic() - self._held_tried > HELD_RETRY_EVERY:
            self._held_tried = time.monotonic()
            found = self._oldest([p.part for p in stale])
            for part in stale:
                part.held = found.get(part.part, part.held)

    def _oldest(self, numbers: list[int]) -> dict[int, tuple[int, float | None]]:
        """The oldest message the topic holds of each partition: (its offset, its
        receipt time); partitions that gave none in HELD_READ seconds left out."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        reader = Consumer(
            {
                "bootstrap.servers": self.log.bootstrap,
                "group.id": f"{self.owner}.held",
                "enable.auto.commit": False,
            }
        )
        found: dict[int, tuple[int, float | None]] = {}
        seen: set[int] = set()  # the first message of each read (not ours: none found)
        try:
            reader.assign([TopicPartition(self.log.topic, n, OFFSET_BEGINNING) for n in numbers])
            deadline = time.monotonic() + HELD_READ
            while len(seen) < len(numbers) and time.monotonic() < deadline:
                msg = reader.poll(0.2)
                if msg is None or msg.error() is not None or msg.partition() in seen:
                    continue
                number = int(msg.partition() or 0)
                seen.add(number)
                try:
                    found[number] = (_offset(msg), decode_message(msg.value() or b"").received_at)
                except KafkaLogError:
                    log_.warning("partition %d offset %d: not a msgtally message; its receipt "
                                 "time unknown", number, _offset(msg))  # fmt: skip
        finally:
            reader.close()
        return found

    def _adopt_announced(self) -> None:
        """Groups announced in the store that a live partition's machine does not
        expect yet: back-filled there (each partition owes them its own ids)."""
        self._last_announced = time.monotonic()
        try:
            groups = read_announced(self.store)
        except SQLAlchemyError:
            return  # the store is away: the next look in ANNOUNCE_EVERY
        if not groups:
            return
        for part in list(self.parts.values()):
            self._adopt(part, groups)

    def _adopt(self, part: Partition, groups: list[tuple[str, str]]) -> None:
        """The announced groups this partition's machine does not expect yet,
        expected (committed with the partition's next commit)."""
        if part.replaying:
            return  # after the replay: its figures were made without them
        try:
            part.adopt(groups, self._scan)
        except (SQLAlchemyError, KafkaLogError) as exc:
            self._set_aside(part.part, exc)

    # -- the topic's history ------------------------------------------------------

    def _scan(self, partition: int, before: int) -> Iterator[bytes]:
        """The partition's messages from the oldest the topic keeps up to `before`."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        reader = Consumer(
            {
                "bootstrap.servers": self.log.bootstrap,
                "group.id": f"{self.owner}.scan",
                "enable.auto.commit": False,
            }
        )
        try:
            reader.assign([TopicPartition(self.log.topic, partition, OFFSET_BEGINNING)])
            while True:
                msg = reader.poll(5.0)
                if msg is None:
                    raise KafkaLogError(
                        f"{self.log}: partition {partition} gave nothing before offset {before}"
                    )
                if msg.error() is not None:
                    continue
                if _offset(msg) >= before:
                    return
                yield msg.value() or b""
                if _offset(msg) + 1 >= before:
                    return
        finally:
            reader.close()


def unreplayable(part: int, checkpoint: int, committed: int, low: int, high: int) -> str | None:
    """Why the topic, holding offsets `low` to `high` of the partition, cannot
    rebuild the partition whose checkpoint is at `checkpoint` and whose figures
    are committed up to `committed`; None when it can."""
    if checkpoint < low:
        return (
            f"partition {part}: its checkpoint is at offset {checkpoint} but the topic's "
            f"oldest offset (low watermark) is {low}: retention deleted messages its "
            "replay needs. Keep the topic's retention well above --checkpoint-every; "
            "this store cannot go on from this topic"
        )
    if committed > high:
        return (
            f"partition {part}: the store has committed up to offset {committed} but the "
            f"topic ends at offset {high} (high watermark): it is not the topic the store "
            "was filled from (recreated, or the broker lost its log)"
        )
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _numbers(tps: list[Any]) -> str:
    return ",".join(str(tp.partition) for tp in tps) or "none"


def _offset(msg: Any) -> int:
    offset = msg.offset()
    assert offset is not None  # a message read from a partition has one
    return int(offset)
