"""Ingest over HTTP (records/s) against stdlib json.loads of the same bodies.

    python bench/ingest_rate.py            # SQLite; ~1 min
    python bench/ingest_rate.py --pg       # PostgreSQL too

For each store, a fresh collector in its own process (`msgtally serve
--no-reconcile`: client and server do not share a GIL; `--engine` runs the
engine in it too), `--senders` clients (threads, one persistent connection
each) posting pre-serialized JSON bodies of `--batch` records and waiting for
every 200. Then the log is read back: it holds every record.

The reference, in the same run, on the same bodies: stdlib `json.loads` of
every body, one core. Goals: >= 300,000 records/s over HTTP, and >= 1x the
reference.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import CollectorProcess, Workload, chunks, log, pg_database, scratch_dir, wire
from sqlalchemy import create_engine, text

GOAL_RATE = 300_000
GOAL_RATIO = 1.0


def make_bodies(ids: int, batch: int, seed: int) -> tuple[list[bytes], int]:
    workload = Workload(ids, seed=seed, with_record_id=True)
    bodies = []
    n = 0
    for part in chunks(workload.records(), batch):
        # as a shim sends them: an object with records and its instance name
        body = {"records": [wire(rec, rid) for rec, rid in part], "source": "bench"}
        bodies.append(json.dumps(body).encode())
        n += len(part)
    return bodies, n


def send_all(send: Callable[[Any, bytes], None], open_client: Callable[[], Any],
             close_client: Callable[[Any], None], bodies: list[bytes],
             senders: int) -> float:  # fmt: skip
    """Every body through `send`, from `senders` threads (a client each); wall seconds."""
    todo: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    for b in bodies:
        todo.put(b)
    for _ in range(senders):
        todo.put(None)
    errors: list[str] = []
    clients = [open_client() for _ in range(senders)]
    gate = threading.Barrier(senders + 1)

    def worker(k: int) -> None:
        gate.wait()
        while (body := todo.get()) is not None:
            try:
                send(clients[k], body)
            except Exception as exc:
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for c in clients:
        close_client(c)
    if errors:
        raise RuntimeError(f"a sender failed: {errors[0]}")
    return elapsed


def post_all(base_url: str, bodies: list[bytes], senders: int) -> tuple[float, int]:
    """Post every body to /v1/records (one persistent client per thread); wall
    seconds and the records the collector accepted."""
    import httpx

    accepted: list[int] = []  # list.append: safe from every sender thread

    def open_client() -> httpx.Client:
        client = httpx.Client(base_url=base_url, timeout=120)
        client.get("/healthz")  # the connection opened before the clock starts
        return client

    def send(client: httpx.Client, body: bytes) -> None:
        resp = client.post("/v1/records", content=body,
                           headers={"content-type": "application/json"})  # fmt: skip
        if resp.status_code != 200:
            raise RuntimeError(f"collector answered {resp.status_code} {resp.text[:200]}")
        accepted.append(resp.json()["accepted"])

    elapsed = send_all(send, open_client, lambda c: c.close(), bodies, senders)
    return elapsed, sum(accepted)


def logged(url: str) -> int:
    store = create_engine(url)
    with store.connect() as conn:
        n = int(conn.execute(text("SELECT coalesce(sum(n), 0) FROM log")).scalar_one())
    store.dispose()
    return n


def json_loads_rate(bodies: list[bytes], records: int) -> float:
    started = time.perf_counter()
    for body in bodies:
        json.loads(body)
    return records / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ids", type=int, default=300_000, help="produced ids (~3 records each)")
    ap.add_argument("--batch", type=int, default=10_000, help="records per request")
    ap.add_argument("--senders", type=int, default=4, help="concurrent clients")
    ap.add_argument("--pg", action="store_true", help="PostgreSQL too")
    ap.add_argument("--engine", action="store_true", help="run the engine in the collector")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    load = os.getloadavg()[0]
    log(f"building bodies of {args.batch:,} records")
    bodies, records = make_bodies(args.ids, args.batch, args.seed)
    reference = json_loads_rate(bodies, records)
    results = []
    serve_args = () if args.engine else ("--no-reconcile",)
    with scratch_dir() as directory:
        stores = [("SQLite", f"sqlite:///{directory / 'ingest.db'}")]
        for name, url in stores:
            with CollectorProcess(url, directory / "collector.log", args=serve_args) as c:
                elapsed, accepted = post_all(c.url, bodies, args.senders)
            assert accepted == records == logged(url), (accepted, records)
            results.append((name, records / elapsed))
            log(f"{name}: {records / elapsed:,.0f} records/s")
        if args.pg:
            with pg_database() as url:
                with CollectorProcess(url, directory / "collector-pg.log", args=serve_args) as c:
                    elapsed, accepted = post_all(c.url, bodies, args.senders)
                assert accepted == records == logged(url), (accepted, records)
                results.append(("PostgreSQL", records / elapsed))
    print("\n== ingest_rate ==")
    print(f"load average at start: {load:.2f} (2 cores)")
    print(f"{records:,} records in {len(bodies)} bodies of {args.batch:,}, "
          f"{args.senders} senders, engine {'on' if args.engine else 'off'}")
    print(f"reference: stdlib json.loads of the same bodies: {reference:,.0f} records/s")
    for name, rate in results:
        ratio = rate / reference
        print(f"{name}: {rate:,.0f} records/s over HTTP, {ratio:.2f}x json.loads "
              f"(goals >= {GOAL_RATE:,}/s: {'met' if rate >= GOAL_RATE else 'missed'}, "
              f">= {GOAL_RATIO}x: {'met' if ratio >= GOAL_RATIO else 'missed'})")


if __name__ == "__main__":
    main()
