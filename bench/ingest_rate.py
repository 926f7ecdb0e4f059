"""Ingest rate over HTTP (records/s) against a raw insert of the same rows.

For each store (SQLite, PostgreSQL) and batch size (default 1,000 and 10,000
records per request), a fresh store and a collector in its own process
(`python -m msgtally.cli serve --no-reconcile`, so client and server do not
share a GIL). The client posts pre-serialized JSON bodies over persistent
httpx connections (--concurrency clients, each its own thread and connection)
and waits for every 200.

The reference, in the same run, on a fresh store of the same schema, with the
same batches each committed on its own (a 200 means committed):
  SQLite      msgtally.ingest.db.open_engine (same pragmas: WAL, synchronous=FULL) and
              executemany of writer.py's INSERT with precomputed row tuples;
  PostgreSQL  COPY of the same precomputed rows into the records table.
ratio = HTTP records/s / reference records/s; goal >= 0.7.

--profile adds one run per configuration with the collector under py-spy
(pip install py-spy) and prints where its samples fall (JSON decode,
validation, record keys, row tuples, the SQL write, commit, HTTP/ASGI).

Example: python bench/ingest_rate.py
         python bench/ingest_rate.py --records 100000 --concurrency 1,4 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import queue
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from _common import (
    CollectorProcess,
    Rec,
    Workload,
    chunks,
    log,
    machine_busy,
    pg_database,
    psycopg_url,
    rkey_of,
    scratch_dir,
)

from msgtally.ingest.db import open_engine

GOAL = 0.7
_COLS = ("stream, message_id, rkey, kind, grp, ts, attempt, outcome, "
         "producer, seq, trace_id, span_id, record_id, batch")


def to_json(rec: Rec, record_id: str | None) -> dict[str, Any]:
    stream, mid, kind, grp, ts, attempt, outcome = rec
    out: dict[str, Any] = {"stream": stream, "kind": kind, "message_id": mid, "ts": ts}
    if grp:
        out["group"] = grp
    out["attempt"] = attempt
    out["outcome"] = outcome
    if record_id is not None:
        out["record_id"] = record_id
    return out


def make_records(n: int, seed: int, first_id: int, record_id: bool) -> list[tuple[Rec, str | None]]:
    w = Workload(ids=n // 3 + 100, seed=seed, first_id=first_id, with_record_id=record_id)
    out = []
    for item in w.records():
        out.append(item)
        if len(out) == n:
            break
    return out


@contextlib.contextmanager
def fresh_store(backend: str, tmp: Path, name: str) -> Iterator[str]:
    if backend == "postgresql":
        with pg_database("msgtally_ingest_bench") as url:
            open_engine(url).dispose()  # the schema
            yield url
    else:
        path = tmp / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{path}"
        open_engine(url).dispose()
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)


def count_records(url: str) -> int:
    from sqlalchemy import text

    engine = open_engine(url, create=False)
    with engine.connect() as conn:
        n = int(conn.execute(text("SELECT count(*) FROM records")).scalar_one())
    engine.dispose()
    return n


# ---------------------------------------------------------------------------
# The reference: the same rows, straight into the records table
# ---------------------------------------------------------------------------


def reference(backend: str, url: str, warm: list[list[tuple[Any, ...]]],
              batches: list[list[tuple[Any, ...]]]) -> float:
    """Seconds to write `batches` (after `warm`), each batch its own transaction."""
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(psycopg_url(url)) as conn:
            def write(rows: list[tuple[Any, ...]]) -> None:
                with conn.cursor() as cur, cur.copy(f"COPY records ({_COLS}) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
                conn.commit()

            for rows in warm:
                write(rows)
            started = time.perf_counter()
            for rows in batches:
                write(rows)
            return time.perf_counter() - started

    from msgtally.ingest.writer import _SQLITE_INSERT

    engine = open_engine(url)  # the collector's pragmas: WAL, synchronous=FULL
    raw = engine.raw_connection()
    try:
        dbapi: Any = raw.driver_connection

        def write_sqlite(rows: list[tuple[Any, ...]]) -> None:
            dbapi.execute("BEGIN IMMEDIATE")
            dbapi.executemany(_SQLITE_INSERT, rows)
            dbapi.execute("COMMIT")

        for rows in warm:
            write_sqlite(rows)
        started = time.perf_counter()
        for rows in batches:
            write_sqlite(rows)
        return time.perf_counter() - started
    finally:
        raw.close()
        engine.dispose()


def rows_of(records: list[tuple[Rec, str | None]], batch: int) -> list[tuple[Any, ...]]:
    return [
        (s, m, rkey_of(rec, rid), k, g, ts, a, o, None, None, None, None, rid, batch)
        for rec, rid in records
        for s, m, k, g, ts, a, o in (rec,)
    ]


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


def post_all(base_url: str, bodies: list[bytes], concurrency: int) -> tuple[float, int]:
    """Post every body (shared queue, one persistent client per thread)."""
    import httpx

    todo: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    for b in bodies:
        todo.put(b)
    for _ in range(concurrency):
        todo.put(None)
    accepted = [0] * concurrency
    errors: list[str] = []
    clients = [httpx.Client(base_url=base_url, timeout=120) for _ in range(concurrency)]
    for c in clients:  # open the connections before the clock starts
        c.get("/healthz")
    start_gate = threading.Barrier(concurrency + 1)

    def worker(k: int) -> None:
        client = clients[k]
        start_gate.wait()
        while (body := todo.get()) is not None:
            resp = client.post("/v1/records", content=body,
                               headers={"content-type": "application/json"})
            if resp.status_code != 200:
                errors.append(f"{resp.status_code} {resp.text[:200]}")
                return
            accepted[k] += resp.json()["accepted"]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    start_gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"collector answered {errors[0]}")
    return elapsed, sum(accepted)


# py-spy frames are "Class.function (path/file.py:line)". The innermost frame of a
# sample that names a step wins; samples of idle threads are left out.
PROFILE_STEPS = {
    "loads": "json.loads",
    "validate_record": "validate_record / parse_body",
    "parse_body": "validate_record / parse_body",
    "parse_batch": "validate_record / parse_body",
    "record_key": "record_key",
    "_rows": "_rows: row tuples",
    "_open_batches": "inbox rows",
    "_copy_insert": "PG: COPY _ingest + INSERT..SELECT",
    "do_executemany": "SQLite executemany",
    "do_commit": "commit",
    "do_close": "close connection (NullPool)",
    "_close_connection": "close connection (NullPool)",
    "__connect": "open connection + pragmas (NullPool)",
    "_read_body": "read request body (ASGI)",
    "write_batch": "write_batch, other",
    "_decode_and_store": "_decode_and_store, other",
}
IDLE = ("EpollSelector.select", "Condition.wait", "Event.wait", "Thread._wait_for_tstate_lock",
        "Queue.get", "SimpleQueue.get")


def _func(frame: str) -> str:
    return frame.split(" (", 1)[0]


def summarize_profile(path: Path) -> list[tuple[str, int]]:
    totals: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if not any(_func(f).endswith(("run_forever", "WorkerThread.run")) for f in frames):
            continue  # start-up (imports) and shutdown
        if _func(frames[-1]) in IDLE:
            continue
        in_worker = any(_func(f).endswith("WorkerThread.run") for f in frames)
        step = "worker thread, other" if in_worker else "event loop thread: HTTP/ASGI/FastAPI"
        for frame in reversed(frames):
            name = PROFILE_STEPS.get(_func(frame).rsplit(".", 1)[-1])
            if name:
                step = name
                break
        totals[step] += int(count)
    return totals.most_common()


def in_process(backend: str, tmp: Path, bodies: list[bytes], warm: list[bytes]) -> float:
    """The collector's own decode-validate-store function, called directly: no HTTP."""
    from msgtally.ingest.api import _decode_and_store

    with fresh_store(backend, tmp, "inproc") as url:
        engine = open_engine(url)
        for b in warm:
            _decode_and_store(engine, b)
        started = time.perf_counter()
        for b in bodies:
            _decode_and_store(engine, b)
        elapsed = time.perf_counter() - started
        engine.dispose()
    return elapsed


def http_run(backend: str, tmp: Path, bodies: list[bytes], warm: list[bytes],
             concurrency: int, expect: int, wrap: list[str] | None = None) -> dict[str, Any]:
    with fresh_store(backend, tmp, "http") as url:
        with CollectorProcess(url, tmp / "collector.log", wrap=wrap or ()) as coll:
            post_all(coll.url, warm, 1)
            cpu0 = coll.cpu_seconds()
            busy0 = machine_busy()
            elapsed, accepted = post_all(coll.url, bodies, concurrency)
            busy1 = machine_busy()
            cpu = coll.cpu_seconds() - cpu0
        if accepted != expect:
            raise RuntimeError(f"accepted {accepted} of {expect} records")
        stored = count_records(url)
    machine = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return {"seconds": elapsed, "server_cpu": cpu, "stored": stored, "machine": machine}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=300_000,
                    help="records per configuration (default 300000)")
    ap.add_argument("--batch-sizes", default="1000,10000",
                    help="records per request, comma-separated (default 1000,10000)")
    ap.add_argument("--concurrency", default="1,4",
                    help="client connections posting at once, comma-separated (default 1,4)")
    ap.add_argument("--backends", default="sqlite,postgresql",
                    help="stores, comma-separated (default sqlite,postgresql)")
    ap.add_argument("--no-record-id", action="store_true",
                    help="records without a shim record_id (the collector hashes every field)")
    ap.add_argument("--seed", type=int, default=2, help="workload seed (default 2)")
    ap.add_argument("--profile", action="store_true",
                    help="also run each configuration once under py-spy and summarize")
    ap.add_argument("--keep", metavar="DIR", help="work directory to keep (logs, profiles)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    backends = ["postgresql" if b in ("pg", "postgres") else b for b in backends]
    if args.profile and not shutil.which("py-spy"):
        ap.error("--profile needs py-spy on PATH (pip install py-spy)")

    with_rid = not args.no_record_id
    log(f"generating {args.records:,} records ...")
    recs = make_records(args.records, args.seed, 0, with_rid)
    warm_recs = make_records(max(sizes) * 2, args.seed + 1, 10**9, with_rid)
    gc.freeze()  # the data sets are long-lived: keep the cyclic GC off them
    json_bytes = 0
    results: list[dict[str, Any]] = []
    profiles: dict[tuple[str, int], list[tuple[str, int]]] = {}
    with scratch_dir(args.keep) as tmp:
        for size in sizes:
            bodies = [orjson.dumps([to_json(r, rid) for r, rid in part])
                      for part in chunks(recs, size)]
            warm = [orjson.dumps([to_json(r, rid) for r, rid in part])
                    for part in chunks(warm_recs, size)][:2]
            json_bytes = sum(map(len, bodies))
            ref_batches = [rows_of(part, i + 1) for i, part in enumerate(chunks(recs, size))]
            ref_warm = [rows_of(part, 10**6 + i)
                        for i, part in enumerate(chunks(warm_recs, size))][:2]
            gc.freeze()
            for backend in backends:
                log(f"{backend}, batch {size:,}: reference ...")
                with fresh_store(backend, tmp, "ref") as url:
                    ref = reference(backend, url, ref_warm, ref_batches)
                    assert count_records(url) == len(recs) + sum(map(len, ref_warm))
                log(f"{backend}, batch {size:,}: in-process _decode_and_store ...")
                inproc = in_process(backend, tmp, bodies, warm)
                for conc in concs:
                    log(f"{backend}, batch {size:,}: HTTP, {conc} client(s) ...")
                    r = http_run(backend, tmp, bodies, warm, conc, len(recs))
                    results.append({"backend": backend, "batch": size, "conc": conc,
                                    "ref": ref, "inproc": inproc, **r})
                    log(f"  {len(recs) / r['seconds']:,.0f} rec/s vs reference "
                        f"{len(recs) / ref:,.0f} rec/s")
                if args.profile:
                    log(f"{backend}, batch {size:,}: HTTP under py-spy ...")
                    out = tmp / f"pyspy-{backend}-{size}.txt"
                    wrap = ["py-spy", "record", "-r", "250", "--format", "raw", "-o", str(out),
                            "--"]
                    http_run(backend, tmp, bodies, warm, 1, len(recs), wrap=wrap)
                    for _ in range(100):  # py-spy writes its file when the child exits
                        if out.exists():
                            break
                        time.sleep(0.1)
                    profiles[(backend, size)] = summarize_profile(out)

    print()
    print(f"=== ingest_rate: {len(recs):,} records per configuration, "
          f"{'with' if with_rid else 'without'} record_id, "
          f"~{json_bytes / len(recs):.0f} JSON bytes/record ===")
    print("ratio = HTTP records/s / reference records/s (same batches, one commit each); "
          f"goal >= {GOAL}")
    print("in-process = the collector's _decode_and_store(engine, body) called directly "
          "(JSON decode, validation, write_batch; no HTTP), sequential")
    print("server cpu = collector CPU seconds / wall seconds (1.00 = one core busy); "
          f"machine = busy share of all {os.cpu_count()} cores (client, collector, database)")
    print(f"  {'store':<10} {'batch':>6} {'clients':>7} {'HTTP rec/s':>12} {'ref rec/s':>12} "
          f"{'ratio':>6}  {'in-process':>10} {'ratio':>6}  {'server cpu':>10} {'machine':>7}  goal")
    for r in results:
        http_rate = len(recs) / r["seconds"]
        ref_rate = len(recs) / r["ref"]
        inproc_rate = len(recs) / r["inproc"]
        ratio = http_rate / ref_rate
        print(f"  {r['backend']:<10} {r['batch']:>6,} {r['conc']:>7} {http_rate:>12,.0f} "
              f"{ref_rate:>12,.0f} {ratio:>6.2f}  {inproc_rate:>10,.0f} "
              f"{inproc_rate / ref_rate:>6.2f}  {r['server_cpu'] / r['seconds']:>10.2f} "
              f"{r['machine']:>7.0%}  "
              f"{'met' if ratio >= GOAL else 'MISSED'}")
    ref_name = {"sqlite": "executemany of writer.py's INSERT, one connection (open_engine "
                "pragmas)", "postgresql": "COPY into records, one connection"}
    print("references: " + "; ".join(f"{b}: {ref_name.get(b, b)}" for b in backends))
    for (backend, size), steps in profiles.items():
        total = sum(n for _, n in steps) or 1
        print(f"\ncollector profile (py-spy, active samples), {backend}, batch {size:,}, "
              "1 client:")
        for name, n in steps:
            print(f"  {n / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
