"""A bounded disk: the store's size under a steady rate, with and without pruning.

    python bench/retention.py                  # 2 x 10 minutes (SQLite); ~21 min
    python bench/retention.py --seconds 120 --window 30   # a quick look

Two runs of a real `msgtally serve` (its own process, SQLite, the engine on),
one after the other, each receiving the same steady rate of records (one
stream, two groups, 3 records a message; 1% of deliveries lost, 0.5%
duplicated, 0.2% of ids consumed and never produced) for `--seconds`:

- the reference: nothing pruned (`--retain 3650d --retain-verdicts 3650d`);
- pruned: `--retain W --retain-verdicts W` (W = `--window`, 120 s).

Measured in each: every POST /v1/records' latency, and the store's file
size every 2 s. Checked in each: at the end, every figure of /v1/slis equals
the oracle's (msgtally.oracle, run over each request's records; every id's
records travel in one request). Goals of the pruned run: its size flat over
the last half of the run (max within 10% of min), its p99 ingest latency over
the part past the window within 1.5x of the reference's over the same part.

Printed: bytes per record of the unpruned store (the whole file, and the log
alone, from SQLite's dbstat), the GB a day that makes at 20,000 messages/s
(3 records each), and the steady size pruned (measured, and projected to
that rate for a window).

tests/test_retention.py runs the pruned run for 60 s with a 20 s window
through `run` (`pytest -m slow`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import CollectorProcess, log, scratch_dir

from msgtally.names import COUNT_FIELDS
from msgtally.oracle import GroupOutcome, Record, nearest_rank, oracle
from msgtally.slis.read.sketch import RELATIVE_ERROR

STREAM = "orders"
GROUPS = ("billing", "analytics")
RECORDS_PER_MESSAGE = 3  # a produce and a consume per group
POSTS_PER_SECOND = 10
PROJECTED_MESSAGES = 20_000  # a second, for the projection
GOAL_FLAT = 0.10
GOAL_P99 = 1.5
FOREVER = "3650d"


@dataclass
class Truth:
    """The oracle's figures summed over every request (each id's records are in one)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def add(self, outcome: Mapping[tuple[str, str], GroupOutcome]) -> None:
        for (_stream, group), g in outcome.items():
            into = self.counts.setdefault(group, dict.fromkeys(COUNT_FIELDS, 0))
            for name, value in g.counts.items():
                into[name] += value
            self.latencies.setdefault(group, []).extend(g.latencies)

    def problems(self, slis: list[dict[str, Any]]) -> list[str]:
        """How /v1/slis differs from the oracle; empty when every figure is exact."""
        got = {r["group"]: r for r in slis if r["stream"] == STREAM}
        out = []
        if set(got) != set(self.counts):
            out.append(f"groups: {sorted(got)} != {sorted(self.counts)}")
        for group, want in self.counts.items():
            row = got.get(group)
            if row is None:
                continue
            out += [f"{group} {n}: {row[n]} != {v}" for n, v in want.items() if row[n] != v]
            lat = sorted(self.latencies[group])
            if row["latency_count"] != len(lat):
                out.append(f"{group} latency_count: {row['latency_count']} != {len(lat)}")
            if not math.isclose(row["latency_sum"], math.fsum(lat), rel_tol=1e-9, abs_tol=1e-6):
                out.append(f"{group} latency_sum: {row['latency_sum']} != {math.fsum(lat)}")
            for name, q in (("latency_p50", 0.5), ("latency_p90", 0.9), ("latency_p99", 0.99)):
                exact = nearest_rank(lat, q)
                if (row[name] is None) != (exact is None) or (
                    exact is not None and abs(row[name] - exact) > RELATIVE_ERROR * exact + 1e-9
                ):
                    out.append(f"{group} {name}: {row[name]} != {exact} (past the sketch's error)")
        return out


def request(first: int, n: int, now: float) -> tuple[bytes, list[Record]]:
    """`n` messages numbered from `first`, as one request body, and the same records
    for the oracle. Which ones are lost, duplicated or unexpected follows from the
    number: the same run twice sends the same records."""
    records: list[Record] = []
    for i in range(first, first + n):
        mid, t0 = f"m{i}", now - 0.3
        if i % 500 == 7:  # consumed, never produced: unexpected
            records += [Record(STREAM, "consume", mid, t0, g, record_id=f"{mid}/{g}")
                        for g in GROUPS]  # fmt: skip
            continue
        records.append(Record(STREAM, "produce", mid, t0, record_id=f"{mid}/p"))
        for k, g in enumerate(GROUPS):
            if (i + k) % 100 == 3:  # lost for this group
                continue
            at = t0 + 0.002 + ((i * 7 + k) % 200) / 1000
            records.append(Record(STREAM, "consume", mid, at, g, record_id=f"{mid}/{g}"))
            if (i + k) % 200 == 11:  # delivered twice
                records.append(Record(STREAM, "consume", mid, at + 0.05, g,
                                      record_id=f"{mid}/{g}/again"))  # fmt: skip
    wire = [{"stream": r.stream, "kind": r.kind, "message_id": r.message_id, "ts": r.ts,
             "attempt": r.attempt, "outcome": r.outcome, "record_id": r.record_id,
             **({"group": r.group} if r.group else {})} for r in records]  # fmt: skip
    return json.dumps({"records": wire, "source": "bench"}).encode(), records


@dataclass
class RunResult:
    """One run: what went in, how long each POST took, how big the store was."""

    pruned: bool
    seconds: float
    window: float
    records: int = 0
    messages: int = 0
    posts: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds)
    # (at, store file bytes, WAL bytes, log rows held), every 2 s
    sizes: list[tuple[float, int, int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # figures vs the oracle
    held_since_age: float | None = None  # now - log_held_since as the sending ends
    table_bytes: dict[str, int] = field(default_factory=dict)  # dbstat at the end
    file_bytes: int = 0

    def p99(self, after: float) -> float:
        lat = sorted(s for at, s in self.posts if at >= after)
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else math.nan

    def last_half(self, since: float = 0.5) -> list[int]:
        return [db for at, db, _wal, _n in self.sizes if at >= self.seconds * since]

    def flatness(self, since: float = 0.5) -> float:
        """(max - min) / min of the store's size from `since` (a fraction of the
        run) to its end: by default over the last half."""
        half = self.last_half(since)
        return (max(half) - min(half)) / min(half) if half else math.nan


def _sample(db: Path) -> tuple[int, int, int]:
    wal = Path(f"{db}-wal")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = int(conn.execute("SELECT count(*) FROM log").fetchone()[0])
    except sqlite3.OperationalError:  # the tables are not made yet
        rows = 0
    finally:
        conn.close()
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0, rows


def _table_bytes(db: Path) -> dict[str, int]:
    """Bytes of pages each table and index takes in the file (SQLite's dbstat)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    finally:
        conn.close()
    return {str(name): int(size) for name, size in rows}


def run(
    directory: Path, *, seconds: float, window: float, rate: int, pruned: bool,
    deadline: float = 10.0, remember: float = 60.0,
    progress: Callable[[str], None] = log,
) -> RunResult:  # fmt: skip
    """A fresh collector on a SQLite file, `rate` records a second for `seconds`,
    then every figure checked against the oracle."""
    name = "pruned" if pruned else "reference"
    db = directory / f"{name}.db"
    keep = f"{window:g}" if pruned else FOREVER
    args = ("--retain", keep, "--retain-verdicts", keep, "--deadline", f"{deadline:g}",
            "--settle", "2", "--remember", f"{remember:g}", "--no-otlp-grpc")  # fmt: skip
    result = RunResult(pruned, seconds, window)
    truth = Truth()
    per_post = max(1, rate // (RECORDS_PER_MESSAGE * POSTS_PER_SECOND))
    with CollectorProcess(f"sqlite:///{db}", directory / f"{name}.log", args=args) as c:
        start = time.monotonic()
        stop = threading.Event()

        def sizes() -> None:
            while not stop.wait(2.0):
                at = time.monotonic() - start
                result.sizes.append((at, *_sample(db)))

        sampler = threading.Thread(target=sizes, daemon=True)
        sampler.start()
        with httpx.Client(base_url=c.url, timeout=60) as client:
            k = 0
            while (at := time.monotonic() - start) < seconds:
                body, records = request(k * per_post, per_post, time.time())
                began = time.monotonic()
                resp = client.post("/v1/records", content=body,
                                   headers={"content-type": "application/json"})  # fmt: skip
                took = time.monotonic() - began
                if resp.status_code != 200:
                    raise RuntimeError(f"collector answered {resp.status_code}: {resp.text[:200]}")
                result.posts.append((at, took))
                truth.add(oracle(records, deadline=deadline, expected_groups={STREAM: GROUPS}))
                result.records += len(records)
                result.messages += per_post
                k += 1
                if k % (POSTS_PER_SECOND * 30) == 0 and result.sizes:
                    _at, size, wal, rows = result.sizes[-1]
                    progress(f"{name}: {at:.0f} s, {result.records:,} records, store "
                             f"{size / 2**20:.1f} MiB (WAL {wal / 2**20:.1f}), "
                             f"{rows:,} log rows")  # fmt: skip
                time.sleep(max(0.0, start + k / POSTS_PER_SECOND - time.monotonic()))
            stop.set()
            sampler.join()
            # How far back the log goes as the last records come in (later, with nothing
            # coming, the engine prunes it all).
            slis = client.get("/v1/slis").json()
            held = slis[0]["log_held_since"] if slis else None
            result.held_since_age = None if held is None else time.time() - held
            # Every id judged (deadline + settle past its produce): the figures are final.
            until = time.monotonic() + deadline + 60
            while True:
                slis = client.get("/v1/slis").json()
                result.problems = truth.problems(slis)
                if not result.problems or time.monotonic() > until:
                    break
                time.sleep(1.0)
    result.file_bytes = db.stat().st_size
    result.table_bytes = _table_bytes(db)
    return result


def report(reference: RunResult, pruned: RunResult, rate: int) -> None:
    window = pruned.window
    records = reference.records
    whole = reference.file_bytes / records
    log_bytes = reference.table_bytes.get("log", 0) / records
    per_day = PROJECTED_MESSAGES * RECORDS_PER_MESSAGE * 86_400
    steady = statistics.median(pruned.last_half()) if pruned.last_half() else math.nan
    held = rate * window  # records the pruned log holds at the bench's rate
    after = window + 30  # the part past the window (pruning every few seconds)
    p99_ref, p99_pruned = reference.p99(after), pruned.p99(after)
    ratio = p99_pruned / p99_ref
    flat = pruned.flatness()
    print("\n== retention ==")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores); SQLite; "
          f"{rate:,} records/s for {pruned.seconds:.0f} s a run")  # fmt: skip
    for r in (reference, pruned):
        sizes = [db for _at, db, _w, _n in r.sizes]
        print(f"{'pruned' if r.pruned else 'reference':9} {r.records:,} records, "
              f"{len(r.posts):,} POSTs; store at the end {r.file_bytes / 2**20:.1f} MiB, "
              f"largest {max(sizes) / 2**20:.1f} MiB; largest WAL "
              f"{max(w for _a, _d, w, _n in r.sizes) / 2**20:.1f} MiB; log rows held at the end "
              f"{r.sizes[-1][3]:,}; figures "
              f"{'exact' if not r.problems else 'WRONG: ' + '; '.join(r.problems[:5])}"
              )  # fmt: skip
    print(f"unpruned: {whole:.1f} bytes a record (whole store), {log_bytes:.1f} (log alone); "
          f"tables: " + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in sorted(
              reference.table_bytes.items(), key=lambda kv: -kv[1])[:6]))  # fmt: skip
    print(f"at {PROJECTED_MESSAGES:,} messages/s ({per_day / 1e9:.2f}G records a day), "
          f"unpruned: {whole * per_day / 1e9:.0f} GB a day ({log_bytes * per_day / 1e9:.0f} GB "
          "of it the log)")  # fmt: skip
    held_age = pruned.held_since_age
    print(f"pruned, --retain {window:g}s: steady {steady / 2**20:.1f} MiB over the last half "
          f"(max - min = {flat:.1%} of min; goal <= {GOAL_FLAT:.0%}: "
          f"{'met' if flat <= GOAL_FLAT else 'MISSED'}); the log held the last "
          f"{held_age if held_age is not None else float('nan'):.0f} s as the run ended; "
          f"{steady / held:.1f} bytes per record held (the window's records)")  # fmt: skip
    for days in (1, 7):
        projected = steady / held * PROJECTED_MESSAGES * RECORDS_PER_MESSAGE * days * 86_400
        print(f"  projected steady size at {PROJECTED_MESSAGES:,} messages/s, --retain {days}d: "
              f"{projected / 1e9:.0f} GB")  # fmt: skip
    print(f"p99 POST /v1/records past {after:.0f} s: pruned {p99_pruned * 1000:.1f} ms, reference "
          f"{p99_ref * 1000:.1f} ms: {ratio:.2f}x (goal <= {GOAL_P99}x: "
          f"{'met' if ratio <= GOAL_P99 else 'MISSED'}); p50 "
          f"{statistics.median(s for _a, s in pruned.posts) * 1000:.1f} / "
          f"{statistics.median(s for _a, s in reference.posts) * 1000:.1f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600, help="seconds of each run (default 600)")
    ap.add_argument("--window", type=float, default=120,
                    help="--retain and --retain-verdicts of the pruned run, seconds (default 120)")
    ap.add_argument("--rate", type=int, default=3000, help="records a second (default 3000)")
    ap.add_argument("--keep", metavar="DIR", help="keep the stores and logs in DIR")
    args = ap.parse_args()
    with scratch_dir(args.keep) as directory:
        results = []
        for pruned in (False, True):
            log(f"{'pruned' if pruned else 'reference'} run: {args.seconds:.0f} s")
            results.append(run(directory, seconds=args.seconds, window=args.window,
                               rate=args.rate, pruned=pruned))  # fmt: skip
        report(results[0], results[1], args.rate)


if __name__ == "__main__":
    main()
