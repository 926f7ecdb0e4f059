"""The engine's own bookkeeping as the store holds it, for either deployment.

The single engine writes its last pass and its record counters to the meta
rows, and its backlog is the log's pending rows. On the partitioned
deployment (msgtally worker) each commit records its partition's figures in
the partition's row (msgtally.store.tables.partitions), and these are read
across partitions:

- the last pass is the OLDEST of the partitions' last commits (None while one
  has never committed): every partition has been judged up to it, and one
  stopped worker ages it however many others run. A running worker commits
  every partition each second or so, as the collectors' heartbeats move them;
- the records applied and repeated are SUMS over the partitions (each
  partition's machine counts its own, and its checkpoint keeps the counts, so
  a partition taken over goes on from them);
- the backlog is the SUM over partitions of the messages in the topic past the
  committed offset: the topic's end as the worker last saw it, or as the
  reader's own producer had it acknowledged (`ends`, a collector's), whichever
  is further. It counts the topic's messages (a request's slice, or a
  heartbeat), not records: a worker knows no record count of the messages it
  has not read. A stopped worker's backlog grows with what the collectors
  produce (their heartbeats included), read by a collector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from msgtally.store.tables import log_pending, meta, partitions


@dataclass(frozen=True)
class EngineFacts:
    last_pass: float | None  # unix seconds; None: never
    applied: int  # records applied, repeats included
    repeated: int  # records that repeated one the engine had (a resend)
    backlog: int  # single engine: records logged not yet applied; workers: messages


def engine_facts(conn: Connection, ends: Sequence[int] | None = None) -> EngineFacts:
    """The engine's bookkeeping: the workers' when the store has partitions (the
    Kafka log), else the single engine's. `ends`: the topic's end offset per
    partition as a collector's producer had it acknowledged."""
    p = partitions
    rows = conn.execute(
        select(p.c.part, p.c.next_offset, p.c.committed_at, p.c.records, p.c.repeats,
               p.c.log_end)
    ).all()  # fmt: skip
    if not rows:
        facts = dict(conn.execute(select(meta.c.key, meta.c.value)).all())
        last = facts.get("last_pass_at")
        backlog = conn.execute(select(func.coalesce(func.sum(log_pending.c.n), 0))).scalar_one()
        return EngineFacts(
            None if last is None else float(last), int(facts.get("records_applied", 0)),
            int(facts.get("records_repeated", 0)), int(backlog),
        )  # fmt: skip
    known = ends or ()
    passes = [r.committed_at for r in rows]
    backlog = 0
    for r in rows:
        end = max(int(r.log_end), known[r.part] if r.part < len(known) else 0)
        backlog += max(0, end - int(r.next_offset))
    return EngineFacts(
        None if None in passes else float(min(passes)), sum(int(r.records) for r in rows),
        sum(int(r.repeats) for r in rows), backlog,
    )  # fmt: skip
