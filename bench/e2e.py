"""The way a user sees it: from the first POST to exact figures, and how fresh they are.

    python bench/e2e.py                    # backlog of 1M ids, then freshness; ~2 min
    python bench/e2e.py --settle 2         # the same with a shorter settle allowance

backlog: a fresh `msgtally serve` (its own process, the embedded SQLite
store, the engine on) receives ~1M ids (~3M records, every one past its
deadline) from 4 senders in 10k-record batches, while a client polls
/v1/slis every half second. Measured: from the first POST to the first poll
whose every figure equals the ground truth. Reference, same run: DuckDB
reading the same records from an NDJSON file and computing every tally
(bench/engine_rate.py's query). Goal >= 0.5x DuckDB's rate.

freshness: a shim (msgtally.Tally, default flush interval of 1 s) produces
and consumes a message every 50 ms on a stream with a 2 s deadline, and a
tenth of them are never consumed; /metrics is read every 50 ms. Measured:
from the ok consume to `msgtally_messages_delivered_total` counting it, and
from deadline + settle to `msgtally_messages_lost_total` counting a lost
one. Goal: both within 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
from _common import CollectorProcess, Workload, chunks, log, scratch_dir, wire
from engine_rate import duckdb_tallies, write_ndjson
from ingest_rate import post_all
from prometheus_client.parser import text_string_to_metric_families

from msgtally import Tally

GOAL_E2E = 0.5
GOAL_FRESH = 2.0


def slis_exact(url: str, expected: dict[tuple[str, str], dict[str, float]]) -> bool:
    got = {(r["stream"], r["group"]): r for r in httpx.get(url + "/v1/slis").json()}
    if set(got) != set(expected):
        return False
    for key, want in expected.items():
        for field, value in want.items():
            if field == "latency_sum":
                if abs(got[key][field] - value) > 1e-6 * max(1.0, abs(value)):
                    return False
            elif got[key][field] != value:
                return False
    return True


def backlog(ids: int, settle: float, directory: Path) -> tuple[float, float, int]:
    """(seconds from first POST to exact figures, seconds of the POSTs, records)."""
    workload = Workload(ids, seed=3)
    bodies = [
        httpx.Request("POST", "/", json={"records": [wire(r, rid) for r, rid in part]}).read()
        for part in chunks(workload.records(), 10_000)
    ]
    expected = workload.expected
    url = f"sqlite:///{directory / 'e2e.db'}"
    with CollectorProcess(url, directory / "e2e.log", args=("--settle", str(settle))) as c:
        done = threading.Event()
        exact_at: list[float] = []

        def poll() -> None:
            while not done.is_set():
                if slis_exact(c.url, expected):
                    exact_at.append(time.perf_counter())
                    return
                time.sleep(0.5)

        started = time.perf_counter()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        posting, _ = post_all(c.url, bodies, 4)
        poller.join(600)
        done.set()
    if not exact_at:
        raise RuntimeError("the figures were not exact after 10 minutes")
    return exact_at[0] - started, posting, workload.n_records


def freshness(directory: Path, seconds: float) -> tuple[list[float], list[float]]:
    """Lags (s) of delivered figures after the consume, and of lost ones after
    deadline + settle."""
    deadline, settle = 2.0, 1.0
    args = ("--deadline", str(deadline), "--settle", str(settle))
    with CollectorProcess(f"sqlite:///{directory / 'fresh.db'}", directory / "fresh.log",
                          args=args) as c:  # fmt: skip
        samples: list[tuple[float, float, float]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                text = httpx.get(c.url + "/metrics").text
                d = l_ = 0.0
                for family in text_string_to_metric_families(text):
                    for s in family.samples:
                        if s.name == "msgtally_messages_delivered_total":
                            d += s.value
                        elif s.name == "msgtally_messages_lost_total":
                            l_ += s.value
                samples.append((time.time(), d, l_))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        tally = Tally("fresh", collector_url=c.url, tracing=False)
        consumed_at: list[float] = []
        lost_due: list[float] = []
        n = 0
        end = time.time() + seconds
        while time.time() < end:
            n += 1
            mid = f"m{n}"
            t0 = time.time()
            tally.produced(mid, ts=t0)
            if n % 10 == 0:
                lost_due.append(t0 + deadline + settle)
            else:
                now = time.time()
                tally.consumed(mid, group="g", ts=now)
                consumed_at.append(now)
            time.sleep(0.05)
        time.sleep(deadline + settle + 4)
        stop.set()
        watcher.join()
        tally.close()

    def lags(events: list[float], column: int) -> list[float]:
        out = []
        for i, at in enumerate(events):
            seen = next((t for t, *v in samples if v[column - 1] >= i + 1), None)
            if seen is not None:
                out.append(max(0.0, seen - at))
        return out

    return lags(consumed_at, 1), lags(lost_due, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ids", type=int, default=1_000_000)
    ap.add_argument("--settle", type=float, default=10.0, help="the collector's --settle")
    ap.add_argument("--fresh-seconds", type=float, default=20.0)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with scratch_dir() as directory:
        log(f"backlog of {args.ids:,} ids")
        took, posting, records = backlog(args.ids, args.settle, directory)
        path = directory / "records.ndjson"
        write_ndjson(Workload(args.ids, seed=3), path)
        _, duck_load, duck_compute = duckdb_tallies(path, 2)
        log("freshness")
        delivered, lost = freshness(directory, args.fresh_seconds)
    duck = duck_load + duck_compute
    ratio = (args.ids / took) / (args.ids / duck)
    print("\n== e2e ==")
    print(f"load average at start: {load:.2f} (2 cores)")
    print(f"backlog: {args.ids:,} ids, {records:,} records posted in {posting:.2f} s "
          f"({records / posting:,.0f} records/s); every figure exact in /v1/slis "
          f"{took:.2f} s after the first POST ({args.ids / took:,.0f} ids/s), "
          f"settle {args.settle} s")
    print(f"reference: DuckDB from the NDJSON file, every tally: {duck:.2f} s "
          f"({args.ids / duck:,.0f} ids/s)")
    verdict = "met" if ratio >= GOAL_E2E else "missed"
    print(f"  ratio: {ratio:.2f}x (goal >= {GOAL_E2E}x: {verdict})")
    for name, lags in (("delivered", delivered), ("lost", lost)):
        if not lags:
            print(f"freshness, {name}: no sample")
            continue
        p50, p99 = statistics.median(lags), max(lags) if len(lags) < 100 else statistics.quantiles(
            lags, n=100)[98]
        worst = max(lags)
        print(f"freshness, {name}: p50 {p50:.2f} s, p99 {p99:.2f} s, max {worst:.2f} s over "
              f"{len(lags)} messages (goal <= {GOAL_FRESH} s: "
              f"{'met' if worst <= GOAL_FRESH else 'missed'})")


if __name__ == "__main__":
    main()
