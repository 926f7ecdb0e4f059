"""Peak memory of the reconcile process: bounded by the slice and the ids in
flight, never by history (docs/design.md, "Scale").

1. For each --sizes N: a fresh SQLite store with N produced ids (~3 records
   each, loaded by a child process), then
   `reconcile(engine, ReconcileConfig(), now=<after every deadline>)` in another
   fresh child process, which reports:
     peak RSS     VmHWM of /proc/self/status (the process image's high-water mark)
     ru_maxrss    getrusage; on Linux it starts from the parent's RSS at spawn,
                  so this driver stays small (it never holds the data)
     sampled      RSS read every 5 ms by a thread
     tracemalloc  peak of the Python allocations (SQLite's own are not traced)
   and the RSS before the pass (interpreter and imports).
2. History: on the store of the largest size, already reconciled, ingest --more
   new ids (later timestamps) and reconcile again in a fresh child: the second
   pass must not need more memory than the first (and, for the same work,
   should not take longer either).
The tallies are checked against the injected counts after every pass.

Example: python bench/reconcile_memory.py                      (250k and 1M, then +1M)
         python bench/reconcile_memory.py --sizes 1000000,4000000   (4M: ~10 min)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    RssSampler,
    Workload,
    compare_tallies,
    load_sqlite,
    log,
    maxrss_bytes,
    mib,
    read_tallies,
    rss_bytes,
    scratch_dir,
    vm_hwm_bytes,
)

# Peak RSS may grow by this factor from one size to the next and still count as flat
# (allocator noise, SQLite's page cache filling up to its bound).
FLAT = 1.25


def child_reconcile(db: str, now: float, trace: bool) -> int:
    """Run one reconcile pass; print one JSON line with the measurements."""
    import tracemalloc

    from msgtally.ingest.db import open_engine
    from msgtally.reconcile import ReconcileConfig, reconcile

    engine = open_engine(f"sqlite:///{db}")
    config = ReconcileConfig()
    base_rss = rss_bytes()
    slices: list[tuple[int, float]] = []
    last = [time.perf_counter()]

    def on_slice(result: Any) -> None:
        t = time.perf_counter()
        slices.append((result.records, t - last[0]))
        last[0] = t
        if result.records:
            print(f"[child] slice {len(slices)}: {result.records:,} records, "
                  f"{result.classified:,} classified in {slices[-1][1]:.2f}s, "
                  f"RSS {mib(rss_bytes())}", file=sys.stderr, flush=True)

    kwargs: dict[str, Any] = {}
    if "on_slice" in inspect.signature(reconcile).parameters:
        kwargs["on_slice"] = on_slice
    if trace:
        tracemalloc.start()
    with RssSampler() as sampler:
        started, cpu0 = time.perf_counter(), time.process_time()
        result = reconcile(engine, config, now=now, **kwargs)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    traced = tracemalloc.get_traced_memory()[1] if trace else None
    print(json.dumps({
        "seconds": elapsed, "cpu": cpu, "records": result.records, "classified": result.classified,
        "updated": result.updated, "hwm": vm_hwm_bytes(), "maxrss": maxrss_bytes(),
        "rss_before": base_rss, "rss_peak_sampled": sampler.peak, "traced_peak": traced,
        "slices": slices,
    }))
    return 0


def child_load(db: str, ids: int, seed: int, first_id: int) -> int:
    """Load a workload; print its record count, `now` and the injected counts."""
    from msgtally.ingest.db import open_engine

    engine = open_engine(f"sqlite:///{db}")
    w = Workload(ids=ids, seed=seed, first_id=first_id)
    seconds = load_sqlite(engine, w)
    engine.dispose()
    print(json.dumps({
        "seconds": seconds, "n_records": w.n_records, "now": w.now_after_deadlines(),
        "expected": [[s, g, t] for (s, g), t in w.expected.items()],
    }))
    return 0


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                         check=True, text=True)
    m: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return m


def merged(*expected: dict[Any, dict[str, float]]) -> dict[Any, dict[str, float]]:
    out: dict[Any, dict[str, float]] = {}
    for e in expected:
        for k, v in e.items():
            acc = out.setdefault(k, dict.fromkeys(v, 0))
            for f, x in v.items():
                acc[f] += x
    return out


def check(db: Path, expected: dict[Any, dict[str, float]]) -> str:
    from msgtally.ingest.db import open_engine

    engine = open_engine(f"sqlite:///{db}")
    problems = compare_tallies(expected, read_tallies(engine))
    engine.dispose()
    return "OK" if not problems else "MISMATCH " + "; ".join(problems[:3])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="250000,1000000",
                    help="produced ids per store, comma-separated (default 250000,1000000; "
                    "4000000 works but takes ~10 min on 2 cores)")
    ap.add_argument("--more", type=int, default=1_000_000,
                    help="ids ingested into the largest store after its first pass, then "
                    "reconciled again (default 1000000; 0 skips)")
    ap.add_argument("--seed", type=int, default=3, help="workload seed (default 3)")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="RSS only (tracemalloc slows Python allocations a little)")
    ap.add_argument("--keep", metavar="DIR", help="keep the stores in DIR")
    ap.add_argument("--child-reconcile", metavar="DB", help=argparse.SUPPRESS)
    ap.add_argument("--child-load", metavar="DB", help=argparse.SUPPRESS)
    ap.add_argument("--now", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--first-id", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_reconcile:
        return child_reconcile(args.child_reconcile, args.now, args.tracemalloc)
    if args.child_load:
        return child_load(args.child_load, args.ids, args.seed, args.first_id)

    sizes = [int(x) for x in args.sizes.split(",")]
    trace = ["--tracemalloc"] if not args.no_tracemalloc else []
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []

    def load(db: Path, ids: int, seed: int, first_id: int) -> dict[str, Any]:
        m = _child("--child-load", str(db), "--ids", str(ids), "--seed", str(seed),
                   "--first-id", str(first_id))
        m["expected"] = {(s, g): t for s, g, t in m["expected"]}
        return m

    with scratch_dir(args.keep) as tmp:
        for i, n in enumerate(sizes):
            db = tmp / f"memory-{n}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
            log(f"loading {n:,} ids (child process) ...")
            ld = load(db, n, args.seed, 0)
            log(f"loaded {ld['n_records']:,} records in {ld['seconds']:.0f}s; "
                "reconcile in a child process ...")
            m = _child("--child-reconcile", str(db), "--now", repr(ld["now"]), *trace)
            m.update(label=f"{n:,} ids", ids=n, check=check(db, ld["expected"]))
            rows.append(m)
            log(f"  {m['seconds']:.1f}s, peak RSS {mib(m['hwm'])}, tallies {m['check']}")
            if i == len(sizes) - 1 and args.more:
                log(f"ingesting {args.more:,} more ids into the reconciled store ...")
                ld2 = load(db, args.more, args.seed + 1, n)
                log("second pass in a child process ...")
                m2 = _child("--child-reconcile", str(db), "--now", repr(ld2["now"]), *trace)
                m2.update(label=f"+{args.more:,} ids on {n:,} done", ids=args.more,
                          check=check(db, merged(ld["expected"], ld2["expected"])))
                rows.append(m2)
                log(f"  {m2['seconds']:.1f}s, peak RSS {mib(m2['hwm'])}, tallies {m2['check']}")

    print()
    print("=== reconcile_memory: SQLite, one reconcile pass per fresh child process ===")
    print(f"driver RSS {mib(rss_bytes())}; load average at start {load_start:.2f} on "
          f"{os.cpu_count()} cores (other work on the machine skews times, not memory)")
    print(f"  {'pass':<28} {'records':>10} {'seconds':>7} {'cpu s':>6} {'ids/s':>7} "
          f"{'RSS before':>10} "
          f"{'peak RSS':>10} {'peak-before':>11} {'sampled':>10} {'ru_maxrss':>10} "
          f"{'tracemalloc':>11} {'full slices first/last, empty':>29}")
    for m in rows:
        traced = mib(m["traced_peak"]) if m["traced_peak"] is not None else "-"
        full = [sec for n_rec, sec in m["slices"] if n_rec >= 200_000]
        sl_txt = f"{full[0]:.2f}/{full[-1]:.2f}s" if full else "-"
        empty = [sec for n_rec, sec in m["slices"] if n_rec == 0]
        sl_txt += f" {empty[-1]:.2f}s" if empty else " -"
        print(f"  {m['label']:<28} {m['records']:>10,} {m['seconds']:>7.1f} "
              f"{m['cpu']:>6.1f} {m['ids'] / m['seconds']:>7,.0f} {mib(m['rss_before']):>10} "
              f"{mib(m['hwm']):>10} {mib(m['hwm'] - m['rss_before']):>11} "
              f"{mib(m['rss_peak_sampled']):>10} {mib(m['maxrss']):>10} "
              f"{traced:>11} {sl_txt:>29}")
    for m in rows:
        print(f"  tallies after {m['label']}: {m['check']}")
    first = [m for m in rows if not m["label"].startswith("+")]
    if len(first) > 1:
        a, b = first[0], first[-1]
        growth = b["hwm"] / a["hwm"]
        print(f"peak RSS, {b['label']} vs {a['label']} ({b['ids'] / a['ids']:.0f}x the ids): "
              f"ratio {growth:.2f} -> {'flat' if growth <= FLAT else 'GROWS with the backlog'}")
    if rows and rows[-1]["label"].startswith("+"):
        a, b = first[-1], rows[-1]
        growth = b["hwm"] / a["hwm"]
        slower = (b["cpu"] / b["ids"]) / (a["cpu"] / a["ids"])
        print(f"second pass ({b['ids']:,} new ids on {a['ids']:,} classified) vs first pass: "
              f"peak RSS ratio {growth:.2f} -> "
              f"{'flat' if growth <= FLAT else 'GROWS with history'}; CPU time per id ratio "
              f"{slower:.2f} -> {'flat' if slower <= FLAT else 'GROWS with history'}")
    print("full slices first/last: seconds of the first and the last slice of >= 200,000 "
          "records (budget 250,000); empty: the closing slice, no new record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
