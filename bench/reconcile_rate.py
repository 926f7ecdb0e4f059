"""How fast does a reconcile pass classify a backlog of ids, against references
measured in the same run on the same data?

Loads --ids produced ids (about 3 records each: ~1% lost, ~0.5% duplicated
deliveries, 2 consumer groups, produce and consume retries, dead letters, late
and unexpected ids) into a fresh store, then times
`reconcile(engine, ReconcileConfig(), now=<after every deadline>)` end to end.

References, each as a ratio reference_time / reconcile_time (the reconcile's
ids/s over the reference's ids/s; above 1 means the reconcile is faster):
  select    SELECT stream, message_id, kind, grp, ts, attempt, outcome FROM records,
            every row fetched into Python through SQLAlchemy Core on the same
            engine (the reference of the goal: ratio >= 0.5), and through the raw
            DB-API cursor.
  duckdb    DuckDB in memory, data already loaded: produced ids LEFT JOIN consumed
            ids GROUP BY (the simple join), and the same query extended to every
            tally of docs/definitions.md (checked against the ground truth too).
  counter   Python dict/Counter join of the fetched rows (produced x consumed ok).
The reconcile's tallies are checked against the counts injected by the generator.

Example: python bench/reconcile_rate.py              (SQLite, 1M ids)
         python bench/reconcile_rate.py --pg --ids 300000
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    GROUPS,
    StatementTimer,
    Timing,
    Workload,
    clock,
    compare_tallies,
    load_pg,
    load_sqlite,
    log,
    pg_database,
    psycopg_url,
    read_tallies,
    scratch_dir,
    since,
    total_of,
)
from sqlalchemy import Engine, select

from msgtally.ingest.db import open_engine
from msgtally.ingest.tables import records
from msgtally.reconcile import ReconcileConfig, reconcile

GOAL_SELECT = 0.5
SELECT_COLS = "stream, message_id, kind, grp, ts, attempt, outcome"

DUCKDB_SIMPLE = """
WITH p AS (SELECT DISTINCT stream, message_id FROM r WHERE kind = 'produce' AND outcome = 'ok'),
c AS (SELECT stream, message_id, grp, count(*) AS ok FROM r
      WHERE kind = 'consume' AND outcome = 'ok' GROUP BY stream, message_id, grp),
g AS (SELECT DISTINCT stream, grp FROM r WHERE kind = 'consume')
SELECT p.stream, g.grp, count(*) AS produced, count(c.ok) AS consumed,
       sum(greatest(coalesce(c.ok, 0) - 1, 0)) AS duplicated
FROM p JOIN g ON g.stream = p.stream
LEFT JOIN c ON c.stream = p.stream AND c.message_id = p.message_id AND c.grp = g.grp
GROUP BY p.stream, g.grp
"""

# Every tally of the outcome table of docs/definitions.md, the deadline being 300 s.
# "some ok ts <= deadline" is "the earliest ok ts <= deadline".
DUCKDB_FULL = """
WITH p AS (
  SELECT stream, message_id, max(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) AS acked,
         min(ts) AS t0, max(attempt) AS pmax
  FROM r WHERE kind = 'produce' GROUP BY stream, message_id),
c AS (
  SELECT stream, message_id, grp, count(*) AS n, count(*) FILTER (WHERE outcome = 'ok') AS ok,
         min(ts) FILTER (WHERE outcome = 'ok') AS first_ok, max(attempt) AS cmax,
         max(CASE WHEN outcome = 'dead_letter' THEN 1 ELSE 0 END) AS dl,
         count(*) FILTER (WHERE outcome = 'error') AS errors
  FROM r WHERE kind = 'consume' GROUP BY stream, message_id, grp),
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
SELECT * FROM t JOIN u USING (stream, grp)
"""


def describe(sql: str) -> str:
    """Which step of reconcile/join.py a statement is (for the profile)."""
    s = sql
    if s.startswith("INSERT INTO t_agg"):
        if "records.kind =" in s:
            return "t_agg: consume side per id+group (cand x records x t_p)"
        if "JOIN groups" in s:
            return "t_agg: owed rows, produced ids x expected groups not consumed"
        return "t_agg: placeholder rows, streams without a group"
    if s.startswith("INSERT INTO t_new"):
        return ("t_new: classify fresh rows (t_agg LEFT JOIN outcomes, o IS NULL)"
                if "outcomes.stream IS NULL" in s else
                "t_new: update earlier classified rows (o IS NOT NULL)")
    if s.startswith("INSERT INTO tallies"):
        return ("tallies: consume_errors from new records"
                if "FROM records" in s or "JOIN records" in s
                else "tallies: sum(new - old) per stream+group")
    table = s.split()[2] if s.startswith(("INSERT", "DELETE")) else ""
    return {
        "groups": "groups: new consumer groups (new records)",
        "t_cand": "t_cand: candidates (new records UNION due pending UNION unsettled)",
        "t_p": "t_p: produce side per id (cand x records)",
        "outcomes": "outcomes: upsert changed states",
        "latency_buckets": "latency_buckets: histogram upsert",
        "pending": "pending: insert still-unclassified" if s.startswith("INSERT")
        else "pending: delete candidates",
        "inbox": "inbox: delete taken batches",
    }.get(table, "")


# --try-join-order: what the reconcile would take if SQLite joined in the order the
# statements are written (scratch table outer, records searched by key), as a
# CROSS JOIN forces. A measurement aid for the implementation, not a fix.
_JOIN_ORDER = (
    ("FROM t_cand JOIN records ON", "FROM t_cand CROSS JOIN records ON"),
    ("FROM records JOIN t_batch ON records.batch = t_batch.id",
     "FROM t_batch CROSS JOIN records ON records.batch = t_batch.id"),
)


def force_join_order(engine: Engine) -> dict[str, int]:
    from sqlalchemy import event

    counts = {a: 0 for a, _ in _JOIN_ORDER}

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _rewrite(conn: Any, cursor: Any, stmt: str, params: Any, ctx: Any,
                 many: bool) -> tuple[str, Any]:
        for a, b in _JOIN_ORDER:
            if a in stmt:
                counts[a] += 1
                stmt = stmt.replace(a, b)
        return stmt, params

    return counts


def pg_plan_fixes(engine: Engine) -> dict[str, int]:
    """--try-pg-plan: what the pass would take with statistics on its scratch tables
    and no JIT. join.py analyses t_cand, t_p and t_agg, but t_batch never and t_agg
    only after the INSERT that reads it back (the owed rows); unanalysed temporary
    tables make PostgreSQL guess sizes, then hash whole tables (records, outcomes)
    and JIT-compile. This ANALYZEs t_batch and t_agg before their first reads and
    sets jit = off for the pass."""
    from sqlalchemy import event

    counts = {"SET LOCAL jit = off": 0, "ANALYZE t_batch": 0, "ANALYZE t_agg": 0}

    @event.listens_for(engine, "before_cursor_execute")
    def _fix(conn: Any, cursor: Any, stmt: str, params: Any, ctx: Any, many: bool) -> None:
        if stmt.startswith("INSERT INTO groups"):  # the pass's first read of t_batch
            for sql in ("SET LOCAL jit = off", "ANALYZE t_batch"):
                cursor.execute(sql)
                counts[sql] += 1
        elif stmt.startswith("INSERT INTO t_agg") and "JOIN groups" in stmt:
            cursor.execute("ANALYZE t_agg")
            counts["ANALYZE t_agg"] += 1

    return counts


def fetch_sqlalchemy(engine: Engine) -> tuple[Timing, int]:
    r = records.c
    stmt = select(r.stream, r.message_id, r.kind, r.grp, r.ts, r.attempt, r.outcome)
    started = clock()
    with engine.connect() as conn:
        rows = conn.execute(stmt).fetchall()
    elapsed = since(started)
    n = len(rows)
    del rows
    return elapsed, n


def fetch_raw(engine: Engine, url: str, db_path: Path | None) -> tuple[Timing, list[Any]]:
    sql = f"SELECT {SELECT_COLS} FROM records"
    if db_path is not None:
        import sqlite3

        started = clock()
        conn = sqlite3.connect(db_path)
        rows = conn.execute(sql).fetchall()
        elapsed = since(started)
        conn.close()
    else:
        import psycopg

        started = clock()
        with psycopg.connect(psycopg_url(url)) as conn:
            rows = conn.execute(sql).fetchall()
        elapsed = since(started)
    return elapsed, rows


def counter_join(rows: list[Any]) -> tuple[Timing, dict[tuple[str, str], int]]:
    """Python reference: produced ids (ok) x consumed ok per group; lost per group."""
    started = clock()
    produced: set[tuple[str, str]] = set()
    consumed: Counter[tuple[str, str, str]] = Counter()
    for stream, mid, kind, grp, _ts, _att, outcome in rows:
        if outcome != "ok":
            continue
        if kind == "produce":
            produced.add((stream, mid))
        else:
            consumed[(stream, mid, grp)] += 1
    lost: Counter[tuple[str, str]] = Counter()
    for stream, mid in produced:
        for g in GROUPS:
            if (stream, mid, g) not in consumed:
                lost[(stream, g)] += 1
    return since(started), dict(lost)


def duckdb_refs(rows: list[Any], repeat: int) -> dict[str, Any]:
    import duckdb
    import numpy as np

    started = time.perf_counter()
    cols = list(zip(*rows, strict=True))
    names = SELECT_COLS.split(", ")
    data = {}
    for name, col in zip(names, cols, strict=True):
        if name == "ts":
            data[name] = np.array(col, dtype=np.float64)
        elif name == "attempt":
            data[name] = np.array(col, dtype=np.int64)
        else:
            data[name] = np.array(col, dtype=object)
    del cols
    con = duckdb.connect()
    con.execute("CREATE TABLE r AS SELECT * FROM data")
    del data
    load = time.perf_counter() - started
    out: dict[str, Any] = {"load": load, "threads": con.execute(
        "SELECT current_setting('threads')").fetchone()[0]}  # type: ignore[index]
    for key, sql in (("simple", DUCKDB_SIMPLE), ("full", DUCKDB_FULL)):
        best = (float("inf"), float("inf"))
        for _ in range(repeat):
            t = clock()
            res = con.execute(sql)
            result_rows = res.fetchall()
            best = min(best, since(t))
            desc = [d[0] for d in res.description]
        out[key] = best
        if key == "full":
            out["full_tallies"] = {
                (row[0], row[1]): dict(zip(desc, row, strict=True)) for row in result_rows
            }
    con.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ids", type=int, default=1_000_000, help="produced ids (default 1000000)")
    ap.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    ap.add_argument("--chunk", type=int, default=10_000,
                    help="records per ingest batch (inbox row) when loading (default 10000)")
    ap.add_argument("--id-order", choices=("random", "sequential"), default="random",
                    help="uuid4-like random ids (default) or time-ordered ids")
    ap.add_argument("--budget", type=int, default=None,
                    help="ReconcileConfig.budget, records per slice (default: the package's)")
    ap.add_argument("--pg", action="store_true",
                    help="run against a fresh PostgreSQL database (MSGTALLY_BENCH_PG, default "
                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres), dropped afterwards")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each reference, best kept (default 2; the reconcile runs once)")
    ap.add_argument("--no-duckdb", action="store_true", help="skip the DuckDB references")
    ap.add_argument("--keep", metavar="DIR", help="SQLite: keep the store in DIR")
    ap.add_argument("--try-join-order", action="store_true",
                    help="SQLite: rewrite the reconcile's joins of records with a scratch table "
                    "into CROSS JOINs (scratch table outer) to measure what that would gain")
    ap.add_argument("--try-pg-plan", action="store_true",
                    help="PostgreSQL: ANALYZE t_batch and t_agg before their first reads and "
                    "turn JIT off for the pass, to measure what that would gain")
    ap.add_argument("--top", type=int, default=14, help="statements shown in the profile")
    args = ap.parse_args(argv)

    workload = Workload(ids=args.ids, seed=args.seed, id_order=args.id_order)
    config = ReconcileConfig() if args.budget is None else ReconcileConfig(budget=args.budget)
    backend = "postgresql" if args.pg else "sqlite"
    with scratch_dir(args.keep) as tmp:
        if args.pg:
            ctx = pg_database()
        else:
            import contextlib

            db_path = tmp / "reconcile-bench.db"
            for suffix in ("", "-wal", "-shm"):
                Path(str(db_path) + suffix).unlink(missing_ok=True)
            ctx = contextlib.nullcontext(f"sqlite:///{db_path}")
        with ctx as url:
            engine = open_engine(url)
            log(f"loading {args.ids:,} ids into {backend} ...")
            load = (load_pg if args.pg else load_sqlite)(url if args.pg else engine,  # type: ignore[arg-type]
                                                         workload, args.chunk)
            n_rec = workload.n_records
            log(f"loaded {n_rec:,} records in {load:.1f}s")
            results = run(engine, url, None if args.pg else db_path, workload, config, args)
            engine.dispose()
    print_summary(backend, workload, config, load, results, args)
    return 0


def run(engine: Engine, url: str, db_path: Path | None, workload: Workload,
        config: ReconcileConfig, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"loadavg": os.getloadavg()[0]}
    log("reference: SELECT every record through SQLAlchemy Core ...")
    res["select_sa"], n_rows = min(fetch_sqlalchemy(engine) for _ in range(args.repeat))
    assert n_rows == workload.n_records, (n_rows, workload.n_records)
    log("reference: SELECT every record through the raw DB-API cursor ...")
    best, rows = (float("inf"), float("inf")), []
    for _ in range(args.repeat):
        rows = []
        gc.collect()
        t, rows = fetch_raw(engine, url, db_path)
        best = min(best, t)
    res["select_raw"] = best
    log("reference: Python Counter join ...")
    res["counter"], lost = min(counter_join(rows) for _ in range(args.repeat))
    # Produced (acked) ids with no ok consume in a group: the lost ones but the late.
    res["counter_ok"] = all(
        lost.get(k, 0) == v["lost"] - v["late"] for k, v in workload.expected.items()
    )
    if not args.no_duckdb:
        log("reference: DuckDB in-memory joins ...")
        res["duckdb"] = duckdb_refs(rows, args.repeat)
    del rows
    gc.collect()

    log("reconcile ...")
    if args.try_join_order:
        res["rewritten"] = force_join_order(engine)
    if args.try_pg_plan:
        res["rewritten"] = pg_plan_fixes(engine)
    timer = StatementTimer(engine)
    now = workload.now_after_deadlines(config.settle)
    slices: list[tuple[int, float]] = []
    last = [time.perf_counter()]

    def on_slice(result: Any) -> None:
        t = time.perf_counter()
        slices.append((result.records, t - last[0]))
        last[0] = t
        if result.records:
            log(f"  slice {len(slices)}: {result.records:,} records, {result.classified:,} "
                f"classified in {slices[-1][1]:.2f}s")

    kwargs: dict[str, Any] = {}
    if "on_slice" in inspect.signature(reconcile).parameters:
        kwargs["on_slice"] = on_slice
    started = clock()
    result = reconcile(engine, config, now=now, **kwargs)
    res["reconcile"] = since(started)
    res["slices"] = slices
    timer.close()
    res["pass"] = result
    res["timer"] = timer
    log(f"reconciled: {result}")
    got = read_tallies(engine)
    res["problems"] = compare_tallies(workload.expected, got)
    res["totals"] = total_of(got)
    if "duckdb" in res:
        full = {k: {f: v[f] for f in workload.expected[k]} for k, v in
                res["duckdb"]["full_tallies"].items()}
        res["duckdb_problems"] = compare_tallies(workload.expected, full)
    return res


def print_summary(backend: str, w: Workload, config: ReconcileConfig, load: float,
                  res: dict[str, Any], args: argparse.Namespace) -> None:
    ids, n_rec = w.ids, w.n_records
    rec_t, rec_cpu = res["reconcile"]
    p = res["pass"]
    in_process = backend == "sqlite"

    def line(name: str, timing: Timing, ratio: bool = True, goal: float | None = None) -> str:
        secs, cpu = timing
        s = (f"  {name:<46} {secs:8.2f} s {cpu:8.2f} s {ids / secs:>10,.0f} ids/s "
             f"{n_rec / secs:>11,.0f} rec/s")
        if ratio:
            r = secs / rec_t
            s += f"   ratio {r:6.3f}"
            if in_process:
                s += f" (cpu {cpu / rec_cpu:6.3f})"
            if goal is not None:
                s += f"  goal >= {goal}: {'met' if r >= goal else 'MISSED'}"
        return s

    print()
    print(f"=== reconcile_rate: {backend}, {ids:,} produced ids, {n_rec:,} records, "
          f"{len(w.expected)} stream x group pairs, id order {w.id_order} ===")
    print(f"load average at start {res['loadavg']:.2f} on {os.cpu_count()} cores (other "
          "work on the machine slows every line, not only one)")
    if "rewritten" in res:
        print(f"experiment (--try-...): statements changed: {res['rewritten']}")
    print(f"load (not measured): {load:.1f}s; budget {config.budget:,} records/slice; "
          f"pass: {p.batches} batches, {p.records:,} records, {p.candidates:,} candidates, "
          f"{p.classified:,} classified, {p.updated:,} updated")
    print("ratio = reference_time / reconcile_time = reconcile ids/s / reference ids/s; "
          "(cpu ...) = the same with CPU seconds of this process, less sensitive to other load"
          if in_process else "ratio = reference_time / reconcile_time = reconcile ids/s / "
          "reference ids/s (cpu column: this client process only; the work is in PostgreSQL)")
    print(f"  {'':<46} {'wall':>10} {'cpu':>10}")
    print(line("reconcile(engine, config, now=after deadlines)", res["reconcile"], ratio=False))
    print(line("select all records, SQLAlchemy Core (reference)", res["select_sa"],
               goal=GOAL_SELECT))
    print(line("select all records, raw DB-API cursor", res["select_raw"]))
    print(line("Python set/Counter join of fetched rows", res["counter"]))
    print(f"  Counter join's unconsumed ids vs injected counts: "
          f"{'OK' if res['counter_ok'] else 'MISMATCH'}")
    if "duckdb" in res:
        d = res["duckdb"]
        print(line(f"DuckDB simple join ({d['threads']} threads)", d["simple"]))
        print(line("DuckDB all tallies (same semantics)", d["full"]))
        ok = "OK" if not res["duckdb_problems"] else f"mismatch: {res['duckdb_problems'][:5]}"
        print(f"  DuckDB all-tallies query vs injected counts: {ok}  (load {d['load']:.1f}s, "
              "not measured)")
    full = [sec for n_rec, sec in res["slices"] if n_rec >= 0.8 * config.budget]
    empty = [sec for n_rec, sec in res["slices"] if n_rec == 0]
    if full:
        print(f"  slices: {len(res['slices'])}; first full slice {full[0]:.2f}s, last full slice "
              f"{full[-1]:.2f}s (x{full[-1] / full[0]:.2f} as history grows); closing slice "
              f"with no new record {empty[-1] if empty else float('nan'):.2f}s")
    print()
    t = res["totals"]
    print("tallies (all streams and groups): " + ", ".join(
        f"{f}={int(t.get(f, 0)):,}" for f in ("produced", "delivered", "lost", "late",
                                             "recovered", "unexpected", "duplicated", "retried",
                                             "attempts", "dead_lettered", "consume_errors")))
    probs = res["problems"]
    print(f"reconcile tallies vs injected counts: {'OK' if not probs else 'MISMATCH'}")
    for prob in probs[:20]:
        print("  " + prob)
    print()
    print(f"where the reconcile's {rec_t:.2f}s go, per statement (summed over slices):")
    timer: StatementTimer = res["timer"]
    by_name: dict[str, list[float]] = {}
    for sql, (secs, calls) in timer.totals.items():
        name = describe(sql) or sql[:70]
        acc = by_name.setdefault(name, [0.0, 0])
        acc[0] += secs
        acc[1] += calls
    summed = 0.0
    print(f"  {'seconds':>8} {'share':>6} {'calls':>5}  step")
    for name, (secs, calls) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {secs:8.2f} {secs / rec_t:6.1%} {int(calls):5d}  {name}")
    summed = sum(v[0] for v in by_name.values())
    shown = sum(v[0] for _, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top])
    if summed > shown:
        print(f"  {summed - shown:8.2f} {(summed - shown) / rec_t:6.1%}        other statements")
    print(f"  {rec_t - summed:8.2f} {(rec_t - summed) / rec_t:6.1%}        outside statements "
          "(commit, Python, SQL compilation)")


if __name__ == "__main__":
    sys.exit(main())
