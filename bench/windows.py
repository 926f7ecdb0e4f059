"""Windowed figures: the query time of each window over 30 days of per-minute rows.

Writes the engine's per-minute and per-hour rows directly (10M ids over 30
days, spread over 5 streams x 2 groups, with latency buckets), then times
`read_window` (what /v1/slis?since=, `report --since` and the status page
read) for each window, several times, on SQLite and, with --pg, PostgreSQL.
Checks every window's figures against the sums it wrote. Then prunes the
minutes to the default --retain (7 days) and times the windows again (the
longer ones then read hours).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, pg_database, scratch_dir

from msgtally.names import TALLY_FIELDS, bucket_label
from msgtally.reconcile.history import Retention, prune
from msgtally.slis.read.windows import first_minute, read_window
from msgtally.store.db import open_store
from msgtally.store.tables import TIMELINES

WINDOWS = (("5m", 300), ("30m", 1_800), ("1h", 3_600), ("6h", 21_600), ("1d", 86_400),
           ("3d", 259_200), ("30d", 2_592_000))  # fmt: skip
PAIRS = [(f"stream-{s}", f"group-{g}") for s in range(5) for g in range(2)]
DAYS = 30
LES = [bucket_label(b) for b in (0.1, 0.5, 2.5)]


def write(url: str, ids: int, now: float) -> dict[int, int]:
    """Rows for every minute and hour of 30 days; produced per minute start (for checks)."""
    store = open_store(url)
    minutes = DAYS * 1440
    per = ids // (minutes * len(PAIRS))
    end = int(now // 60) * 60
    produced: dict[int, int] = {}
    started = time.monotonic()
    for counts, buckets, step in TIMELINES:
        rows, brows = [], []
        for k in range(DAYS * 86_400 // step):
            at = end - k * step
            n = per * step // 60
            for stream, grp in PAIRS:
                row = dict.fromkeys(TALLY_FIELDS, 0)
                lost = n // 100
                row.update(produced=n, delivered=n - lost, lost=lost, latency_count=n - lost,
                           attempts=n, duplicated=n // 50)  # fmt: skip
                rows.append({"stream": stream, "grp": grp, "at": at, "latency_sum": 0.1 * n,
                             **row})  # fmt: skip
                brows += [{"stream": stream, "grp": grp, "at": at, "le": le, "count": c}
                          for le, c in zip(LES, (n // 2, n // 3, n - lost - n // 2 - n // 3),
                                           strict=True)]  # fmt: skip
                if step == 60:
                    produced[at] = produced.get(at, 0) + n
            if len(rows) >= 20_000:
                _flush(store, counts, buckets, rows, brows)
                rows, brows = [], []
        _flush(store, counts, buckets, rows, brows)
        log(f"  {counts.name}: written ({time.monotonic() - started:.0f} s)")
    if store.dialect.name == "postgresql":
        with store.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    store.dispose()
    return produced


def _flush(store, counts, buckets, rows, brows) -> None:  # type: ignore[no-untyped-def]
    with store.begin() as conn:
        if rows:
            conn.execute(counts.insert(), rows)
        if brows:
            conn.execute(buckets.insert(), brows)


def measure(url: str, now: float, produced: dict[int, int], label: str) -> list[str]:
    store = open_store(url)
    out = []
    for name, seconds in WINDOWS:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            with store.connect() as conn:
                sums = read_window(conn, now, seconds)
            times.append(time.perf_counter() - t0)
        got = sum(s.counts["produced"] for s in sums)
        start = first_minute(now, seconds)
        want = sum(n for at, n in produced.items() if at >= start)
        check = "exact" if got == want else f"from {start // 3600 * 3600} (hours): {got}/{want}"
        out.append(f"| {label} | {name} | {statistics.median(times) * 1000:.1f} ms | "
                   f"{min(times) * 1000:.1f} ms | {got:,} | {check} |")  # fmt: skip
        log(out[-1])
    store.dispose()
    return out


def run(url: str, label: str, ids: int) -> list[str]:
    now = time.time()
    log(f"{label}: writing {DAYS} days of minute and hour rows for {len(PAIRS)} pairs ...")
    produced = write(url, ids, now)
    lines = measure(url, now, produced, f"{label}, 30 days of minutes")
    store = open_store(url)
    deleted = prune(store, now, Retention())
    store.dispose()
    log(f"{label}: pruned {deleted} rows to the default --retain (7 days)")
    lines += measure(url, now, produced, f"{label}, 7 days of minutes + hours")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=10_000_000, help="ids over the 30 days")
    p.add_argument("--pg", action="store_true", help="PostgreSQL too (127.0.0.1:5432)")
    args = p.parse_args()
    lines = ["| store | window | median of 5 | best | produced | figures |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    with scratch_dir() as d:
        lines += run(f"sqlite:///{d / 'windows.db'}", "SQLite", args.ids)
    if args.pg:
        with pg_database() as url:
            lines += run(url, "PostgreSQL", args.ids)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
