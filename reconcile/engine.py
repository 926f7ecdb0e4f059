"""The reconcile engine: the log in, the figures out, one tick at a time.

A tick takes the log rows not applied yet (at most `budget` records), folds
them into the in-memory state (msgtally.reconcile._machine), judges what is
due, and writes what changed together with the tick's own record (which log
rows, at which clocks) in one transaction. Every so often the whole state is
written as a checkpoint. After a crash, the engine loads the checkpoint and
replays the ticks recorded since, without writing their figures again: it
lands on the state the crashed engine had committed, and every figure stays
exactly what an uninterrupted run gives.

The ticks are kept, with the events that changed the state between them (the
configuration an engine started with, groups back-filled), and the last few
checkpoints (CHECKPOINTS_KEPT), each at its own tick: a checkpoint that does
not load is set aside (checkpoint_rejected, with the reason) and the state is
rebuilt from the previous one by replaying the history after it, the same log
rows at the same clocks, without writing a figure again. Without any
checkpoint that loads, the whole history is replayed from an empty machine.
The log is pruned past --retain (msgtally.reconcile.retention), never past
the oldest checkpoint kept: the history a fallback replays is always held.

Two clocks drive the verdicts: `now`, for deadlines (the wall clock, or the
time a batch run is asked to judge at), and the receipt watermark: the
receipt time of the oldest log row not applied yet. An id is judged only
when both are `settle` past what concerns it, so a backlog (after an outage)
is judged as it would have been live.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select

from msgtally.store.db import upsert, write_tx
from msgtally.store.held import log_held_since
from msgtally.store.tables import (
    backfills,
    checkpoint,
    checkpoint_rejected,
    engine_events,
    log,
    log_pending,
    tick_loads,
    ticks,
)
from msgtally.store.tables import quarantine as quarantined

try:
    from . import _machine
except ImportError as exc:  # the C extension is optional at install: say what to do
    raise ImportError(
        "msgtally's reconcile machine (a C extension) was not built: install a C compiler "
        "and the Python headers, then reinstall msgtally[collector]"
    ) from exc
from . import quarantine
from .config import ReconcileConfig
from .lease import Lease
from .outputs import (
    dump_loaded,
    load_verdicts,
    parse_loaded,
    write_errors,
    write_in_flight,
    write_meta,
    write_missing,
    write_pairs,
    write_verdicts,
)
from .retention import pruned_tick

log_ = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 60.0  # seconds between checkpoints of a running engine
# Checkpoints kept, each at its own tick: a damaged one falls back to the one
# before it. The log is held back to the oldest of them.
CHECKPOINTS_KEPT = 3


def checkpoint_interval(retain: float) -> float:
    """Seconds between checkpoints of a running engine whose log is kept `retain`:
    the log is held back to the oldest checkpoint kept, so the checkpoints kept
    span at most half the window (a short window checkpoints more often)."""
    return min(DEFAULT_CHECKPOINT_EVERY, retain / (2 * CHECKPOINTS_KEPT))


@dataclass(frozen=True)
class TickResult:
    batches: int
    records: int
    judged: int

    def __add__(self, other: TickResult) -> TickResult:
        return TickResult(
            self.batches + other.batches, self.records + other.records, self.judged + other.judged
        )


NOTHING = TickResult(0, 0, 0)


# Verdict rows of forgotten (stream, message id) keys, for Machine.install.
Loader = Callable[[Sequence[tuple[str, str]]], list[tuple[Any, ...]]]


@dataclass(frozen=True)
class _Row:
    id: int
    received_at: float
    body: bytes


class Reconciler:
    """The engine over one store; use `open` (lease, recovery) and `close`."""

    def __init__(
        self,
        store: Engine,
        config: ReconcileConfig,
        *,
        checkpoint_every: float = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        self.store = store
        self.config = config
        self.checkpoint_every = checkpoint_every
        self.core = self._fresh()
        self.tick_no = 0
        # Why the state was rebuilt from the log at open (a checkpoint set aside: from
        # an older one, or from an empty machine), or None.
        self.rebuilt: str | None = None
        self._lease = Lease(store)
        self._last_checkpoint = 0.0
        self._last_in_flight: dict[tuple[str, str], tuple[int, float]] | None = None

    # -- life -------------------------------------------------------------

    def open(self) -> Reconciler:
        """Take the lease, rebuild the state, apply the configuration."""
        self._lease.acquire()
        try:
            self._recover()
            settings = {
                "deadline": self.config.deadline,
                "settle": self.config.settle,
                "remember": self.config.remember,
                "stream_deadlines": dict(self.config.stream_deadlines),
            }
            self._configure(settings)
            # Ticks from here on run with this configuration: a replay must too.
            with write_tx(self.store) as conn:
                self._event(conn, "configure", settings)
                self.checkpoint(conn)
            expected = self.core.expected()
            for stream, groups in self.config.expected_groups.items():
                missing = [g for g in groups if g not in expected.get(stream, ())]
                if missing:
                    self._backfill(stream, missing, time.time())
        except BaseException:
            self._lease.release()
            raise
        return self

    def close(self, *, checkpoint: bool = True) -> None:
        try:
            if checkpoint and self._lease.held:
                self.checkpoint()
        finally:
            self._lease.release()

    def __enter__(self) -> Reconciler:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close(checkpoint=exc[0] is None)

    # -- recovery -----------------------------------------------------------

    def _fresh(self) -> _machine.Machine:
        c = self.config
        return _machine.Machine(c.deadline, c.settle, c.remember, c.latency_buckets)

    def _configure(self, settings: dict[str, Any]) -> None:
        self.core.configure(settings["deadline"], settings["settle"], settings["remember"])
        for stream, seconds in settings["stream_deadlines"].items():
            self.core.set_deadline(stream, seconds)

    def _event(self, conn: Connection, kind: str, detail: dict[str, Any]) -> None:
        """Records what changed the state outside a tick, numbered with the ticks."""
        self.tick_no += 1
        conn.execute(
            engine_events.insert().values(tick=self.tick_no, kind=kind, detail=json.dumps(detail))
        )

    def _recover(self) -> None:
        """The latest checkpoint that loads, then the history after it; those that
        do not load are set aside. Without one, the whole history is replayed."""
        with self.store.connect() as conn:
            kept = conn.execute(
                select(checkpoint.c.id, checkpoint.c.tick, checkpoint.c.taken_at,
                       checkpoint.c.body).order_by(checkpoint.c.tick.desc())
            ).all()  # fmt: skip
            pruned = pruned_tick(conn)
        loaded = False
        for saved in kept:
            try:
                self.core.loads(saved.body)
            except _machine.CheckpointError as exc:
                self._set_aside(saved, str(exc))
                self.core = self._fresh()
                continue
            self.tick_no, loaded = int(saved.tick), True
            if self.rebuilt is not None:
                log_.warning("the state is rebuilt from the checkpoint of tick %d and the "
                             "log after it", saved.tick)  # fmt: skip
            break
        # Without a checkpoint (a fresh store, or every one damaged) the whole
        # history is replayed.
        rebuild = not loaded
        if rebuild and pruned:
            log_.error(
                "no checkpoint of this store loads and its log is pruned (through tick %d): "
                "the state is rebuilt from the log still held. Ids produced before it are "
                "unknown to the engine: their later records may count as unexpected", pruned,
            )  # fmt: skip
        replayed = self._replay(after=self.tick_no, rebuild=rebuild)
        if replayed and not rebuild:
            log_.info("replayed %d ticks after checkpoint", replayed)

    def _set_aside(self, saved: Any, reason: str) -> None:
        self.rebuilt = reason
        log_.error(
            "the engine's checkpoint (tick %d) does not load: %s. It is set aside in "
            "table checkpoint_rejected; the state is rebuilt from an older one or the log",
            saved.tick, reason,
        )  # fmt: skip
        with write_tx(self.store) as conn:
            conn.execute(
                checkpoint_rejected.insert().values(
                    tick=saved.tick, taken_at=saved.taken_at, body=saved.body, reason=reason,
                    rejected_at=time.time(),
                )
            )  # fmt: skip
            conn.execute(delete(checkpoint).where(checkpoint.c.id == saved.id))

    def _replay(self, *, after: int, rebuild: bool) -> int:
        """Replays the recorded ticks and events numbered after `after`, in order,
        without writing anything: their figures are in the store already."""
        with self.store.connect() as conn:
            history: list[tuple[int, str, Any]] = [
                (int(r.tick), "tick", r)
                for r in conn.execute(select(ticks).where(ticks.c.tick > after))
            ]
            history += [
                (int(r.tick), r.kind, json.loads(r.detail))
                for r in conn.execute(select(engine_events).where(engine_events.c.tick > after))
            ]
        history.sort(key=lambda h: h[0])
        started = time.monotonic()
        unrecorded = self._replay_unrecorded(history) if rebuild else 0
        for n, (number, kind, what) in enumerate(history):
            if kind == "tick":
                self._replay_tick(what, rebuild=rebuild)
            elif kind == "configure":
                self._configure(what)
            elif kind == "expect":
                # held_after: the log was pruned through that tick when it ran (0: never).
                held_after = int(what.get("held_after", 0))
                self._replay_backfill(number, what["stream"], what["groups"], held_after)
            self.tick_no = number
            if rebuild and n % 1000 == 999:
                log_.info("rebuilding the engine's state: %d of %d ticks", n + 1, len(history))
        if rebuild and (history or unrecorded):
            log_.warning(
                "the engine's state is rebuilt from the log: %d ticks and events replayed "
                "(%.1f s); the figures in the store are unchanged",
                len(history), time.monotonic() - started,
            )  # fmt: skip
        return len(history)

    def _replay_tick(self, row: Any, *, rebuild: bool) -> None:
        ids = [int(i) for i in row.log_ids.split(",") if i]
        with self.store.connect() as conn:
            batch = _read_log(conn, ids)
        new = self.core.new_groups([r.body for r in batch])
        if new and not rebuild:
            raise RuntimeError(f"tick {row.tick} names a new group: the store is inconsistent")
        for stream, groups in _by_stream(new).items():  # an unrecorded back-fill: see below
            with self.store.connect() as conn:
                held_after = pruned_tick(conn)
            self._replay_backfill(int(row.tick), stream, groups, held_after)
        self._fold(batch, row.now, row.watermark, self._loaded_by(int(row.tick)))
        self.core.drain()  # written by the engine that ran the tick

    def _loaded_by(self, tick: int) -> Loader:
        """The verdict rows of the ids a row of tick `tick` names that the tick loaded
        when it ran: the store's rows now may be later ones (that tick's own, or a
        later tick's). A tick recorded by an earlier version, without them: the
        store's."""

        @functools.cache  # read once, at the first row that loads
        def kept() -> list[tuple[Any, ...]] | None:
            with self.store.connect() as conn:
                text = conn.execute(
                    select(tick_loads.c.rows).where(tick_loads.c.tick == tick)
                ).scalar_one_or_none()
            return None if text is None else parse_loaded(text)

        def loaded(keys: Sequence[tuple[str, str]]) -> list[tuple[Any, ...]]:
            rows = kept()
            if rows is None:
                return self._load(keys)
            wanted = set(keys)  # a tick loads row by row: each row's ids
            return [r for r in rows if (r[0], r[1]) in wanted]

        return loaded

    def _replay_backfill(
        self, number: int, stream: str, groups: Sequence[str], held_after: int
    ) -> None:
        """A back-fill again: the groups, and the log rows it scanned (those of the
        ticks numbered before it and after `held_after`, where the log was pruned
        through then) scanned again for the ids it owed them. Pruning never goes
        past the ticks a back-fill after the oldest checkpoint scanned."""
        self.core.expect_groups(stream, groups)
        with self.store.connect() as conn:
            applied: list[int] = []
            scanned = select(ticks.c.log_ids).where(
                ticks.c.tick < number, ticks.c.tick > held_after
            )
            for r in conn.execute(scanned):
                applied += [int(i) for i in r.log_ids.split(",") if i]
            applied.sort()
            for i in range(0, len(applied), 500):
                query = select(log.c.body).where(log.c.id.in_(applied[i : i + 500]))
                for r in conn.execute(query.order_by(log.c.id)):
                    self.core.backfill_scan(r.body, stream)
        self.core.backfill_finish(stream, groups)
        self.core.drain()

    def _replay_unrecorded(self, history: list[tuple[int, str, Any]]) -> int:
        """Log rows applied before the ticks were kept (a store written by an
        earlier version, which deleted them at each checkpoint): their clocks are
        lost, so they are replayed at the first recorded tick's. Figures of ids
        in flight across that point may then differ from an uninterrupted run."""
        recorded = {int(i) for _n, kind, r in history if kind == "tick"
                    for i in r.log_ids.split(",") if i}  # fmt: skip
        with self.store.connect() as conn:
            rows = [
                int(r.id)
                for r in conn.execute(
                    select(log.c.id)
                    .where(log.c.id.not_in(select(log_pending.c.id)))
                    .where(log.c.id.not_in(select(quarantined.c.id)))
                    .order_by(log.c.id)
                )
                if int(r.id) not in recorded
            ]
        if not rows:
            return 0
        first = next((r for _n, kind, r in history if kind == "tick"), None)
        now = float(first.now) if first is not None else time.time()
        watermark = float(first.watermark) if first is not None else now
        log_.warning(
            "%d log rows were applied before this store kept its ticks: replayed at the "
            "clocks of the first tick kept", len(rows),
        )  # fmt: skip
        for i in range(0, len(rows), 500):
            with self.store.connect() as conn:
                batch = _read_log(conn, rows[i : i + 500])
            for stream, groups in _by_stream(self.core.new_groups([r.body for r in batch])).items():
                self.core.expect_groups(stream, groups)
            self._fold(batch, now, watermark, self._load)
            self.core.drain()
        return len(rows)

    # -- ticks ----------------------------------------------------------------

    def tick(self, now: float, *, final: bool = False) -> TickResult:
        """Apply at most `budget` records of the log and judge what is due at `now`.

        `final`: nothing more will arrive before `now` (a batch run), so the
        receipt watermark passes everything once the log is applied.
        """
        with self.store.connect() as conn:
            taken, next_receipt = _take_pending(conn, self.config.budget)
            batch = _read_log(conn, [t[0] for t in taken])
        # Nothing left behind: a batch run has everything, a live engine waits for now.
        last = math.inf if final else now
        watermark = last if next_receipt is None else min(now, next_receipt)
        # Bodies the machine would reject are set aside (quarantine), the others'
        # new groups back-filled before any of them applies.
        new, rejected = self.core.screen([r.body for r in batch])
        aside = [(batch[i].id, batch[i].received_at, taken[i][2], batch[i].body, reason)
                 for i, reason in rejected]  # fmt: skip
        for log_id, _at, _n, _body, reason in aside:
            log_.error("log row %d set aside in quarantine: %s", log_id, reason)
        if aside:
            batch = [r for i, r in enumerate(batch) if i not in dict(rejected)]
        for stream, groups in _by_stream(new).items():
            self._backfill(stream, groups, now)
        before = self.core.stats()
        loaded = self._fold(batch, now, watermark, self._load)
        pairs, rows, missing, errors = self.core.drain()
        flight = self.core.in_flight()
        stats = self.core.stats()
        # A tick changed the state if it applied records, judged or forgot ids, or
        # declared records missing: then recovery must replay it, so it is recorded.
        changed = bool(batch) or any(
            stats[k] != before[k] for k in ("judged", "evicted", "records_missing")
        )
        if (not changed and not aside and not pairs and not rows and not errors
                and flight == self._last_in_flight):  # fmt: skip
            return NOTHING
        with write_tx(self.store) as conn:
            quarantine.set_aside(conn, aside)
            write_pairs(conn, pairs, self.config.latency_buckets, now)
            write_verdicts(conn, rows)
            write_missing(conn, missing)
            write_errors(conn, errors)
            write_in_flight(conn, flight)
            if changed:
                self.tick_no += 1
                ids = [r.id for r in batch]
                if ids:
                    conn.execute(delete(log_pending).where(log_pending.c.id.in_(ids)))
                conn.execute(
                    ticks.insert().values(
                        tick=self.tick_no,
                        log_ids=",".join(map(str, ids)),
                        now=now,
                        watermark=watermark,
                    )
                )
                if loaded is not None:  # for a replay: the store's rows will have moved on
                    conn.execute(
                        tick_loads.insert().values(tick=self.tick_no, rows=dump_loaded(loaded))
                    )
            write_meta(
                conn,
                {
                    "last_pass_at": repr(now),
                    "records_applied": stats["records"],
                    "records_repeated": stats["repeats"],
                    "ids_in_memory": stats["in_memory"],
                    "ids_compact": stats["compact"],
                    "engine_bytes": stats["entry_bytes"] + stats["index_bytes"]
                    + stats["compact_bytes"] + stats["compact_index_bytes"]
                    + stats["sequence_bytes"],
                },
            )
        self._last_in_flight = flight
        if time.monotonic() - self._last_checkpoint > self.checkpoint_every:
            self.checkpoint()
        return TickResult(len(batch), sum(t[2] for t in taken), stats["judged"] - before["judged"])

    def _fold(
        self, batch: Sequence[_Row], now: float, watermark: float, load: Loader
    ) -> list[tuple[Any, ...]] | None:
        """Apply the batch row by row, each followed by its early verdicts (as a
        worker gives them message by message: the figures do not depend on how
        rows were batched into ticks), loading the forgotten ids a row names (their
        verdict rows from `load`) before that row's records of them; judge what is
        due. The rows loaded (None: no id was forgotten)."""
        loaded: list[tuple[Any, ...]] | None = None
        for row in batch:
            self.core.apply(row.body, row.received_at)
            keys = self.core.deferred_keys()
            if keys:
                rows = load(keys)
                loaded = [] if loaded is None else loaded
                loaded += rows  # not a copy a row: a tick may load for thousands
                self.core.install(rows)
                self.core.apply_deferred()
        self.core.advance(now, watermark)
        return loaded

    def _load(self, keys: Sequence[tuple[str, str]]) -> list[tuple[Any, ...]]:
        """The store's verdict rows of these forgotten ids, as of now."""
        with self.store.connect() as conn:
            return load_verdicts(conn, keys)

    def catch_up(
        self, now: float, *, final: bool = True, on_tick: Callable[[TickResult], None] | None = None
    ) -> TickResult:
        """Ticks until the log is applied; then one more to judge what is due."""
        total = NOTHING
        while True:
            result = self.tick(now, final=final)
            total = total + result
            if on_tick is not None and result.batches:
                on_tick(result)
            if result.batches == 0:
                return total

    # -- checkpoints and new groups --------------------------------------------

    def checkpoint(self, conn: Connection | None = None) -> None:
        """Write the whole state, in place of the oldest of the CHECKPOINTS_KEPT (or
        of one at this same tick). The ticks before it stay: a fallback replays them."""
        body = self.core.dumps()
        with _tx(self.store, conn) as c:
            slots = {int(r.id): int(r.tick)
                     for r in c.execute(select(checkpoint.c.id, checkpoint.c.tick))}  # fmt: skip
            slot = _slot(slots, self.tick_no)
            # Deleted, then inserted: SQLite writes an updated row's new pages before
            # it frees the old ones, so an update grows the file by a whole state at
            # every checkpoint; a delete first frees pages the insert then reuses.
            c.execute(delete(checkpoint).where(checkpoint.c.id == slot))
            c.execute(
                checkpoint.insert().values(
                    id=slot, tick=self.tick_no, taken_at=time.time(), body=body
                )
            )
        self._last_checkpoint = time.monotonic()

    def _backfill(self, stream: str, groups: Sequence[str], now: float) -> None:
        """Groups seen for the first time are owed every id produced on their stream.

        Ids in memory get a slot for each; the others are found in the log
        applied so far, in one scan for all of them. The figures and a
        checkpoint commit together, so a crash never counts a back-fill twice.
        """
        self.core.expect_groups(stream, groups)  # one walk of the ids in memory for all
        started = time.monotonic()
        scanned = 0
        with self.store.connect() as conn:
            # What the log holds: the back-fill owes nothing for the ids pruned from it.
            held_after = pruned_tick(conn)
            since = log_held_since(conn) if held_after else None
            applied = (
                select(log.c.id, log.c.body)
                .where(log.c.id.not_in(select(log_pending.c.id)))
                .where(log.c.id.not_in(select(quarantined.c.id)))
            )
            for row in conn.execution_options(yield_per=64).execute(applied.order_by(log.c.id)):
                self.core.backfill_scan(row.body, stream)
                scanned += 1
                if scanned % 1000 == 0:
                    log_.info("back-filling %d new group(s) of stream %r: %d log rows",
                              len(groups), stream, scanned)  # fmt: skip
        owed = self.core.backfill_finish(stream, groups)
        pairs, rows, missing, errors = self.core.drain()
        with write_tx(self.store) as conn:
            write_pairs(conn, pairs, self.config.latency_buckets, now)
            write_verdicts(conn, rows)
            write_missing(conn, missing)
            write_errors(conn, errors)
            self._event(
                conn, "expect", {"stream": stream, "groups": list(groups), "held_after": held_after}
            )
            if since is not None:
                _record_backfill(conn, stream, groups, since, now)
            self.checkpoint(conn)
        if owed or scanned:
            log_.info(
                "%d new group(s) of stream %r (%s): owed %d verdicts of earlier ids "
                "(%d log rows, %.1fs)",
                len(groups), stream, ", ".join(map(repr, groups[:5])), owed, scanned,
                time.monotonic() - started,
            )  # fmt: skip


@contextmanager
def _tx(store: Engine, conn: Connection | None) -> Iterator[Connection]:
    if conn is not None:
        yield conn
    else:
        with write_tx(store) as c:
            yield c


def _slot(slots: dict[int, int], tick: int) -> int:
    """The checkpoint slot (1..CHECKPOINTS_KEPT) a checkpoint at `tick` goes to:
    the one at that tick already, a free one, or the oldest's."""
    for slot, at in slots.items():
        if at == tick:
            return slot
    free = [n for n in range(1, CHECKPOINTS_KEPT + 1) if n not in slots]
    if free:
        return free[0]
    return min(slots, key=lambda n: slots[n])


def _record_backfill(
    conn: Connection, stream: str, groups: Sequence[str], since: float, now: float
) -> None:
    """Groups back-filled from a pruned log: from when their figures count ids."""
    stmt = upsert(conn, backfills)
    stmt = stmt.on_conflict_do_update(
        index_elements=["stream", "grp"],
        set_={"since": stmt.excluded.since, "at": stmt.excluded.at},
    )
    conn.execute(stmt, [{"stream": stream, "grp": g, "since": since, "at": now} for g in groups])


def _by_stream(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for stream, group in pairs:
        out.setdefault(stream, []).append(group)
    return out


Pending = tuple[int, float, int]  # log id, received_at, records


def _take_pending(conn: Connection, budget: int) -> tuple[list[Pending], float | None]:
    """Pending log rows in id order, up to `budget` records (at least one row);
    and the receipt time of the oldest row left behind (None if none)."""
    p = log_pending
    rows = conn.execute(select(p.c.id, p.c.received_at, p.c.n).order_by(p.c.id).limit(10_000))
    taken: list[Pending] = []
    total = 0
    for row in rows:
        if taken and total + row.n > budget:
            break
        taken.append((int(row.id), float(row.received_at), int(row.n)))
        total += row.n
    left = select(func.min(p.c.received_at))
    if taken:
        left = left.where(p.c.id > taken[-1][0])
    oldest = conn.execute(left).scalar()
    return taken, (None if oldest is None else float(oldest))


def _read_log(conn: Connection, ids: Sequence[int]) -> list[_Row]:
    out: dict[int, _Row] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        query = select(log.c.id, log.c.received_at, log.c.body).where(log.c.id.in_(chunk))
        for row in conn.execute(query):
            out[int(row.id)] = _Row(int(row.id), float(row.received_at), bytes(row.body))
    return [out[i] for i in ids]


def reconcile(
    store: Engine,
    config: ReconcileConfig,
    now: float | None = None,
    on_tick: Callable[[TickResult], None] | None = None,
) -> TickResult:
    """A batch run: apply the whole log, judge everything due at `now`, checkpoint.

    Raises LeaseHeld when another engine is running on the store.
    """
    with Reconciler(store, config) as reconciler:
        return reconciler.catch_up(time.time() if now is None else now, on_tick=on_tick)
