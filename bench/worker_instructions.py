"""Instructions a record on `msgtally worker`'s own path, counted by callgrind.

    python bench/worker_instructions.py --callgrind   # both runs under callgrind; ~3 min
    SETUP_ONLY=1 python bench/worker_instructions.py  # one run, without the feeding
    python bench/worker_instructions.py               # one run, e.g. under py-spy

Counting instructions does not move with the machine's other load, as CPU
seconds do. One workload (bench/_common.Workload, `--ids` ids) in requests of
2,000 records, each split over 64 partitions as a collector splits it
(msgtally.ingest.intake.kafka_log.slices: the first request announces the
consumer groups to every partition, version 4) and encoded as the topic's
messages, then a heartbeat past every deadline on every partition. Then, in
one process and without a broker, the worker's path: every partition taken
in a fresh PostgreSQL database (Partition.take), the messages handed to
Worker.feed a poll of POLL_MAX at a time (as confluent-kafka Messages), and
after each poll every partition that changed committed in one transaction
(partition.commit, as Worker._commit). The summed tallies are checked
against the workload's ground truth.

With SETUP_ONLY=1 everything but the feeding and committing runs (the
workload, the messages, the store, the partitions taken); instructions a
record = (full run - setup-only run) / records, both with PYTHONHASHSEED=0.
`--callgrind` runs both under `valgrind --tool=callgrind` with this Python's
own binary (not a shim) and prints that figure.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import Workload, compare_tallies, log, pg_database
from distributed import Tallies, requests_of, summed_tallies

from msgtally.ingest.intake.kafka_log import groups_of, slices
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.partitioned.partition import Partition, commit
from msgtally.reconcile.partitioned.worker import POLL_MAX, Worker
from msgtally.store.db import open_store
from msgtally.store.kafka_log import KafkaLog, encode_message, heartbeat, register_partitions

PARTITIONS = 64
REQUEST = 2000


def messages(workload: Workload, config: ReconcileConfig) -> list[tuple[int, int, bytes]]:
    """The topic's messages as a consumer reads them: (partition, offset, value), the
    requests in order, then a heartbeat past every deadline on every partition."""
    from confluent_kafka import Message

    known: set[tuple[str, str]] = set()
    ends = [0] * PARTITIONS
    out: list[Message] = []

    def put(part: int, value: bytes) -> None:
        out.append(Message(topic="bench", partition=part, offset=ends[part], value=value))
        ends[part] += 1

    for i, (at, records) in enumerate(requests_of(workload, REQUEST)):
        new = sorted(groups_of(records) - known)  # as KafkaWriter announces them
        known.update(new)
        for part, body in slices(records, None, PARTITIONS, new).items():
            put(part, encode_message(f"{i:032x}", at, body))
    final = heartbeat(workload.now_after_deadlines(config.settle))
    for part in range(PARTITIONS):
        put(part, final)
    return out


def prepared(ids: int, config: ReconcileConfig) -> tuple[Tallies, int, list[Any]]:
    """The workload's ground truth, its records and messages; kept in a file of the
    temporary directory once built (building them is most of a setup-only run)."""
    from confluent_kafka import Message

    cache = Path(tempfile.gettempdir()) / f"msgtally-worker-instructions-{ids}.pickle"
    if cache.exists():
        expected, n_records, raw = pickle.loads(cache.read_bytes())
    else:
        workload = Workload(ids)
        raw = [(m.partition(), m.offset(), m.value()) for m in messages(workload, config)]
        expected, n_records = workload.expected, workload.n_records
        cache.write_bytes(pickle.dumps((expected, n_records, raw)))
    batch = [Message(topic="bench", partition=p, offset=o, value=v) for p, o, v in raw]
    return expected, n_records, batch


def run(ids: int, setup_only: bool) -> None:
    config = ReconcileConfig()
    expected, n_records, batch = prepared(ids, config)
    log(f"{ids:,} ids, {n_records:,} records in {len(batch):,} messages")
    with pg_database("msgtally_bench_instr") as url:
        store = open_store(url)
        register_partitions(store, KafkaLog("127.0.0.1:9", "bench"), PARTITIONS)
        worker = Worker.__new__(Worker)  # its loop without a consumer: no broker here
        worker.log = KafkaLog("127.0.0.1:9", "bench")
        worker.parts = {p: Partition.take(store, config, p, "bench") for p in range(PARTITIONS)}
        gc.freeze()  # as Worker.run does before its loop
        if not setup_only:
            for i in range(0, len(batch), POLL_MAX):
                worker.feed(batch[i : i + POLL_MAX])
                fenced = commit([p for p in worker.parts.values() if p.changed])
                assert not fenced
            problems = compare_tallies(expected, summed_tallies(store))
            for p in problems[:10]:
                log(p)
            if problems:
                raise SystemExit("the tallies are not the workload's")
            log("every tally exact")
        store.dispose()


def callgrind(ids: int) -> None:
    """Both runs under callgrind; instructions a record."""
    python = os.path.realpath(sys.executable)  # the binary itself: valgrind runs no shim
    path = os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path[1:]])
    _expected, n_records, _batch = prepared(ids, ReconcileConfig())  # built before either run
    counts = {}
    for setup_only in (True, False):
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": path,
               "SETUP_ONLY": "1" if setup_only else ""}  # fmt: skip
        log(f"under callgrind: {'setup only' if setup_only else 'full'}")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python,
             __file__, "--ids", str(ids)], env=env, capture_output=True, text=True,
        )  # fmt: skip
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode or not found:
            raise SystemExit(done.stderr[-3000:])
        counts[setup_only] = int(found.group(1))
    per = (counts[False] - counts[True]) / n_records
    print(f"== the worker's path, {ids:,} ids, {n_records:,} records, "
          f"{PARTITIONS} partitions ==")  # fmt: skip
    print(f"instructions: full {counts[False]:,}, setup only {counts[True]:,}")
    print(f"instructions a record: {per:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", type=int, default=30_000, help="produced ids (default 30k)")
    ap.add_argument("--callgrind", action="store_true",
                    help="both runs under callgrind, and instructions a record")  # fmt: skip
    args = ap.parse_args()
    if args.callgrind:
        callgrind(args.ids)
    else:
        run(args.ids, bool(os.environ.get("SETUP_ONLY")))


if __name__ == "__main__":
    main()
