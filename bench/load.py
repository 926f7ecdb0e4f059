"""A load run: many senders for minutes against a collector on PostgreSQL.

    python bench/load.py                       # 16 senders, 120 s, PostgreSQL
    python bench/load.py --seconds 30 --sqlite

`msgtally serve` (its own process, the engine on, `--deadline 10 --settle 2
--remember 10`, so that the ids it holds reach their steady state within the
run) on a fresh PostgreSQL database; `--senders` clients post batches of `--batch` records (ids
produced and consumed in time, shim-style record ids) as fast as they are
answered, resending on 429, 503 or a lost connection, for `--seconds`. The
collector's RSS is sampled every second. At the end the engine catches up and
the figures are checked: every acknowledged id counted once, delivered, none
lost, none doubled.

Prints records/s held, ingest latency (p50, p99, max), the RSS at the start,
the end and its peak, and the check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import CollectorProcess, log, mib, pg_database, scratch_dir


def body(sender: int, first: int, n: int, ts: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(first, first + n):
        mid = f"s{sender}-{i}"
        out.append({"stream": "load", "kind": "produce", "message_id": mid, "ts": ts,
                    "record_id": f"{mid}/p"})  # fmt: skip
        out.append({"stream": "load", "kind": "consume", "message_id": mid, "group": "g",
                    "ts": ts + 0.01, "record_id": f"{mid}/c"})  # fmt: skip
    return out


def engine_bytes(url: str) -> int:
    """What the engine says it holds (msgtally writes it with every tick)."""
    from sqlalchemy import create_engine, text

    store = create_engine(url)
    with store.connect() as conn:
        value = conn.execute(text("SELECT value FROM meta WHERE key = 'engine_bytes'")).scalar()
    store.dispose()
    return int(value or 0)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(url: str, directory: Path, senders: int, seconds: float, batch: int) -> None:
    ids = [0] * senders
    latencies: list[float] = []
    retries = [0]
    lock = threading.Lock()
    held_for = ("--deadline", "10", "--settle", "2", "--remember", "10")
    with CollectorProcess(url, directory / "load.log", args=held_for) as c:
        assert c.proc is not None
        stop = time.monotonic() + seconds

        def send(k: int) -> None:
            with httpx.Client(timeout=60) as client:
                while time.monotonic() < stop:
                    payload = body(k, ids[k], batch // 2, time.time())
                    while True:
                        started = time.monotonic()
                        try:
                            code = client.post(f"{c.url}/v1/records", json=payload).status_code
                        except httpx.TransportError:
                            code = 0
                        if code == 200:
                            break
                        with lock:
                            retries[0] += 1
                        time.sleep(0.1)
                    with lock:
                        latencies.append(time.monotonic() - started)
                    ids[k] += batch // 2

        threads = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
        rss_samples = [rss(c.proc.pid)]
        held = []
        started = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            rss_samples.append(rss(c.proc.pid))
            held.append(engine_bytes(url))
            log(f"{sum(ids):,} ids in {time.monotonic() - started:.0f} s, RSS "
                f"{mib(rss_samples[-1])}, engine {mib(held[-1])}")  # fmt: skip
        elapsed = time.monotonic() - started
        sent = sum(ids)
        deadline = time.monotonic() + 300
        while True:
            slis = httpx.get(f"{c.url}/v1/slis").json()
            if slis and slis[0]["produced"] >= sent:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1)
    row = slis[0] if slis else {}
    exact = (row.get("produced"), row.get("delivered"), row.get("lost"), row.get("duplicated"))
    lat = sorted(latencies)
    print("\n== load ==")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    store = url.split("+")[0].split(":")[0]
    print(f"{senders} senders, {batch:,}-record batches, {elapsed:.0f} s against {store}")
    print(f"held: {2 * sent / elapsed:,.0f} records/s ({sent:,} ids, {2 * sent:,} records), "
          f"{retries[0]} resends on 429/503/no connection")
    print(f"ingest latency: p50 {statistics.median(lat) * 1000:.0f} ms, "
          f"p99 {lat[int(len(lat) * 0.99)] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    print(f"collector RSS: start {mib(rss_samples[0])}, end {mib(rss_samples[-1])}, "
          f"peak {mib(max(rss_samples))}; the engine's own: at half time "
          f"{mib(held[len(held) // 2])}, end {mib(held[-1])} (ids held for deadline + settle + "
          "remember = 22 s)")
    ok = exact == (sent, sent, 0, 0)
    print(f"figures: produced, delivered, lost, duplicated = {exact}: "
          f"{'every acknowledged id once, none lost' if ok else 'WRONG'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--senders", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--batch", type=int, default=1000, help="records per request")
    ap.add_argument("--sqlite", action="store_true", help="the embedded store instead")
    args = ap.parse_args()
    with scratch_dir() as directory:
        if args.sqlite:
            run(f"sqlite:///{directory / 'load.db'}", directory, args.senders, args.seconds,
                args.batch)  # fmt: skip
        else:
            with pg_database() as url:
                run(url, directory, args.senders, args.seconds, args.batch)


if __name__ == "__main__":
    main()
