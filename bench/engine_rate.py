"""How fast the reconcile engine turns records into every tally, against DuckDB.

    python bench/engine_rate.py                  # 1M ids (~3M records); ~2 min
    python bench/engine_rate.py --history 10000000   # + flat with 10M ids of history

Measured, on the same synthetic workload (bench/_common.Workload: string
uuid-like ids, 2 groups, loss, duplicates, retries, dead letters, late and
unexpected ids, every record past its deadline):

1. reference: DuckDB, the records in an in-memory table, every tally of
   docs/definitions.md in one SQL statement (`--threads`, 2 by default);
2. the engine's state machine alone (msgtally.reconcile._machine): every log
   body applied, every id judged, the tallies drained: ids/s, and the ratio
   to (1) (goal >= 1x, and >= 500k ids/s);
3. the same through the store: `reconcile()` over the log on SQLite (reading
   the log, writing every figure and verdict, a checkpoint);
4. with `--history N`: N ids applied first, then the rate of the next
   million against the rate of the first (goal >= 0.9);
5. memory per id in flight: ids whose deadline has not passed, held in
   memory (goal <= 300 B per id).

Every run checks the figures against the workload's ground truth.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

from _common import (
    DEADLINE,
    Workload,
    compare_tallies,
    log,
    log_bodies,
    mib,
    read_tallies,
    rss_bytes,
    scratch_dir,
    wire,
)

from msgtally.reconcile import _machine
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.store.db import open_store, write_tx
from msgtally.store.tables import log as log_table
from msgtally.store.tables import log_pending

BATCH = 10_000
GOAL_DUCKDB = 1.0
GOAL_IDS = 500_000
GOAL_FLAT = 0.9
GOAL_BYTES = 300

# Every tally of the outcome table of docs/definitions.md, the deadline being 300 s.
# "some ok ts <= deadline" is "the earliest ok ts <= deadline".
DUCKDB_TALLIES = """
WITH p AS (
  SELECT stream, message_id, max(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) AS acked,
         min(ts) AS t0, max(attempt) AS pmax
  FROM r WHERE kind = 'produce' GROUP BY stream, message_id),
c AS (
  SELECT stream, message_id, "group" AS grp, count(*) AS n,
         count(*) FILTER (WHERE outcome = 'ok') AS ok,
         min(ts) FILTER (WHERE outcome = 'ok') AS first_ok, max(attempt) AS cmax,
         max(CASE WHEN outcome = 'dead_letter' THEN 1 ELSE 0 END) AS dl,
         count(*) FILTER (WHERE outcome = 'error') AS errors
  FROM r WHERE kind = 'consume' GROUP BY stream, message_id, "group"),
g AS (SELECT DISTINCT stream, grp FROM c),
j AS (
  SELECT p.stream, g.grp, p.acked, p.t0, p.pmax, c.n, c.ok, c.first_ok, c.cmax, c.dl,
         c.first_ok <= p.t0 + 300.0 AS in_time
  FROM p JOIN g ON g.stream = p.stream
  LEFT JOIN c ON c.stream = p.stream AND c.message_id = p.message_id AND c.grp = g.grp),
t AS (
  SELECT stream, grp,
    count(*) FILTER (WHERE acked = 1) AS produced,
    count(*) FILTER (WHERE acked = 1 AND in_time) AS delivered,
    count(*) FILTER (WHERE acked = 1 AND in_time IS NOT TRUE) AS lost,
    count(*) FILTER (WHERE acked = 1 AND in_time IS FALSE) AS late,
    count(*) FILTER (WHERE acked = 0 AND ok > 0) AS recovered,
    sum(greatest(coalesce(ok, 0) - 1, 0)) AS duplicated,
    count(*) FILTER (WHERE greatest(pmax, coalesce(cmax, 0)) > 1) AS retried,
    sum(coalesce(n, 0)) AS attempts,
    count(*) FILTER (WHERE acked = 1 AND dl = 1) AS dead_lettered,
    count(*) FILTER (WHERE acked = 1 AND ok > 0) AS latency_count,
    coalesce(sum(first_ok - t0) FILTER (WHERE acked = 1 AND ok > 0), 0) AS latency_sum
  FROM j GROUP BY stream, grp),
u AS (
  SELECT c.stream, c.grp,
         count(*) FILTER (WHERE p.message_id IS NULL) AS unexpected,
         sum(c.errors) AS consume_errors
  FROM c LEFT JOIN p ON p.stream = c.stream AND p.message_id = c.message_id
  GROUP BY c.stream, c.grp)
SELECT t.*, u.unexpected, u.consume_errors FROM t JOIN u ON u.stream = t.stream AND u.grp = t.grp
"""


def write_ndjson(workload: Workload, path: Path) -> None:
    with open(path, "w") as f:
        for rec, rid in workload.records():
            f.write(json.dumps(wire(rec, rid)) + "\n")


def duckdb_tallies(path: Path, threads: int) -> tuple[dict[tuple[str, str], dict[str, float]],
                                                       float, float]:  # fmt: skip
    """(tallies, load seconds, compute seconds) of DuckDB in memory."""
    import duckdb

    con = duckdb.connect(config={"threads": threads})
    started = time.perf_counter()
    con.execute(
        "CREATE TABLE r AS SELECT * FROM read_json(?, format='newline_delimited', columns={"
        "stream: 'VARCHAR', kind: 'VARCHAR', message_id: 'VARCHAR', ts: 'DOUBLE', "
        "\"group\": 'VARCHAR', attempt: 'INTEGER', outcome: 'VARCHAR', record_id: 'VARCHAR'})",
        [str(path)],
    )
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    cur = con.execute(DUCKDB_TALLIES)
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    computed = time.perf_counter() - started
    con.close()
    out = {}
    for row in rows:
        d = dict(zip(names, row, strict=True))
        key = (d.pop("stream"), d.pop("grp"))
        out[key] = {k: float(v) for k, v in d.items()}
    return out, loaded, computed


def drained_tallies(pairs: list[_machine.PairOut]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for stream, group, counts, latency_sum, _hist, _bins in pairs:
        row = out.setdefault((stream, group), {f: 0.0 for f in _machine.TALLY_FIELDS})
        row.setdefault("latency_sum", 0.0)
        for k, v in counts.items():
            row[k] += v
        row["latency_sum"] += latency_sum
    return out


def fresh_core() -> _machine.Machine:
    c = ReconcileConfig()
    return _machine.Machine(c.deadline, c.settle, c.remember, c.latency_buckets)


def run_core(
    bodies: list[bytes], now: float
) -> tuple[float, _machine.Machine, list[_machine.PairOut]]:
    core = fresh_core()
    gc.collect()
    started = time.perf_counter()
    for body in bodies:
        core.apply(body, now)
    core.advance(now, float("inf"))
    pairs, _verdicts, _missing, _errors = core.drain()
    return time.perf_counter() - started, core, pairs


def check(name: str, expected: dict[tuple[str, str], dict[str, float]],
          got: dict[tuple[str, str], dict[str, float]]) -> bool:  # fmt: skip
    problems = compare_tallies(expected, got)
    for p in problems[:10]:
        log(f"  {name}: {p}")
    log(f"{name}: {'every tally exact' if not problems else f'{len(problems)} WRONG'}")
    return not problems


def through_store(bodies: list[bytes], workload: Workload, directory: Path) -> float:
    """reconcile() over a log already written: read, apply, judge, write, checkpoint."""
    store = open_store(str(directory / "engine.db"))
    with write_tx(store) as conn:
        for body in bodies:
            row = conn.execute(
                log_table.insert().values(received_at=0.0, n=0, body=body).returning(
                    log_table.c.id)
            ).one()
            conn.execute(log_pending.insert().values(id=row[0], received_at=0.0, n=BATCH))
    started = time.perf_counter()
    reconcile(store, ReconcileConfig(), now=workload.now_after_deadlines())
    took = time.perf_counter() - started
    check("reconcile() on SQLite", workload.expected, read_tallies(store))
    store.dispose()
    return took


def flat_with_history(history: int, seed: int) -> tuple[float, float, dict[str, int]]:
    """Rates (ids/s) of the first million and of a million after `history` ids."""
    core = fresh_core()
    rates = []
    done = 0
    first = Workload(1_000_000, seed=seed)
    now = T_after(first)
    for start in range(0, history + 1_000_000, 1_000_000):
        w = Workload(1_000_000, seed=seed, first_id=start)
        bodies = log_bodies(w, BATCH)
        now = T_after(w)
        started = time.perf_counter()
        for body in bodies:
            core.apply(body, now)
        core.advance(now, float("inf"))
        core.drain()
        took = time.perf_counter() - started
        done += 1_000_000
        if start == 0 or start >= history:
            rates.append(1_000_000 / took)
        log(f"  history {done:,} ids: this million at {1_000_000 / took:,.0f} ids/s, "
            f"{core.stats()['in_memory']:,} ids in memory")
    return rates[0], rates[-1], core.stats()


def T_after(w: Workload) -> float:
    return 1_700_000_000.0 + w.first_id * w.spacing + w.ids * w.spacing + DEADLINE + 2000.0


def memory_per_id(ids: int, seed: int) -> tuple[float, float, float, float]:
    """Bytes per id held: in flight (full entries) and delivered (compact), as the
    engine counts them, and the process RSS growth per id held."""
    w = Workload(ids, seed=seed)
    bodies = log_bodies(w, BATCH)
    core = fresh_core()
    gc.collect()
    before = rss_bytes()
    for i, body in enumerate(bodies):  # ticks of 100k records, as a running collector
        core.apply(body, 0.0)
        if i % 10 == 9:
            core.advance(1_700_000_000.0, 0.0)  # nothing due: every id stays in memory
    core.advance(1_700_000_000.0, 0.0)
    stats = core.stats()
    full, compact = stats["in_memory"], stats["compact"]
    grown = rss_bytes() - before
    # The tables are sized for every id held; each id's share of them counts.
    held = full + compact
    index = (stats["index_bytes"] + stats["compact_index_bytes"]) / held
    return (
        stats["entry_bytes"] / full + index,
        stats["compact_bytes"] / compact + index,
        compact / held,
        grown / held,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ids", type=int, default=1_000_000, help="produced ids (default 1M)")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    ap.add_argument("--history", type=int, default=0,
                    help="ids applied before measuring a million more (e.g. 10000000)")
    ap.add_argument("--numbered", action="store_true",
                    help="records numbered per sequence, as shims send them (gaps checked)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", help="directory for the data files (default: a temporary one)")
    args = ap.parse_args()

    load = os.getloadavg()[0]
    workload = Workload(args.ids, seed=args.seed)
    log(f"generating {args.ids:,} ids")
    bodies = log_bodies(workload, BATCH, numbered=args.numbered)
    records = workload.n_records
    now = workload.now_after_deadlines()
    with scratch_dir(args.keep) as directory:
        path = directory / "records.ndjson"
        write_ndjson(workload, path)
        log(f"{records:,} records, {len(bodies)} log bodies of {BATCH:,}")

        duck, duck_load, duck_compute = duckdb_tallies(path, args.threads)
        check("DuckDB", workload.expected, duck)
        core_time, core, pairs = run_core(bodies, now)
        check("engine", workload.expected, drained_tallies(pairs))
        if args.numbered:  # no record left out: nothing may be missing
            log(f"engine: {core.stats()['records_missing']} records missing (0 expected)")
        store_time = through_store(bodies, workload, directory)

    duck_rate, core_rate = args.ids / duck_compute, args.ids / core_time
    print("\n== engine_rate ==")
    print(f"load average at start: {load:.2f} (2 cores)")
    print(f"workload: {args.ids:,} ids, {records:,} records"
          f"{', numbered per sequence' if args.numbered else ''}")
    print(f"DuckDB in memory, every tally, {args.threads} threads: {duck_compute:.2f} s, "
          f"{duck_rate:,.0f} ids/s (loading the NDJSON file: {duck_load:.2f} s more)")
    print(f"engine state machine: {core_time:.2f} s, {core_rate:,.0f} ids/s, "
          f"{records / core_time:,.0f} records/s, one core")
    ratio = core_rate / duck_rate
    print(f"  ratio to DuckDB: {ratio:.2f}x (goal >= {GOAL_DUCKDB}x: "
          f"{'met' if ratio >= GOAL_DUCKDB else 'missed'}); "
          f"goal >= {GOAL_IDS:,} ids/s: {'met' if core_rate >= GOAL_IDS else 'missed'}")
    print(f"reconcile() through SQLite (read the log, write figures, checkpoint): "
          f"{store_time:.2f} s, {args.ids / store_time:,.0f} ids/s, "
          f"ratio to DuckDB {args.ids / store_time / duck_rate:.2f}x")
    per_full, per_compact, share, rss_per_id = memory_per_id(min(args.ids, 1_000_000), args.seed)
    met = "met" if max(per_full, rss_per_id) <= GOAL_BYTES else "missed"
    print(f"memory per id held: {per_full:.0f} B in flight, {per_compact:.0f} B once delivered "
          f"and compact ({share:.0%} of them); RSS growth {rss_per_id:.0f} B per id held "
          f"(goal <= {GOAL_BYTES} B: {met})")
    del core
    if args.history:
        log(f"flat with history: {args.history:,} ids first")
        first, last, stats = flat_with_history(args.history, args.seed)
        print(f"flat with history: first million {first:,.0f} ids/s, a million after "
              f"{args.history:,} ids {last:,.0f} ids/s: {last / first:.2f}x (goal >= "
              f"{GOAL_FLAT}: {'met' if last / first >= GOAL_FLAT else 'missed'}); "
              f"{stats['known']:,} ids kept as discrepant, {stats['in_memory']:,} in memory, "
              f"RSS {mib(rss_bytes())}")


if __name__ == "__main__":
    main()
