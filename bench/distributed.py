"""The engine past one machine: records/s of `msgtally worker` processes draining a
Kafka log into PostgreSQL, against the engine alone on the same records.

    python bench/distributed.py             # 300k ids (~950k records), 1, 2, 4 workers; ~3 min
    python bench/distributed.py --profile   # + py-spy on the one worker of a fourth run
    python bench/distributed.py --before /tmp/old  # + the workers of another checkout, in turn

One workload (bench/_common.Workload: string uuid-like ids, 2 groups, loss,
duplicates, retries, dead letters, late and unexpected ids), cut into
requests of `--request` records, each with a receipt time that follows the
records' own clock (a live collector's), and judged at those clocks:

1. reference: the engine alone (msgtally.reconcile._machine, the single
   machine of `msgtally serve`) over the requests as log bodies, each applied
   at its receipt time and judged at it, drained every `--drain` bodies, then
   judged past every deadline: records/s of wall and of CPU, `--repeat` times
   (the ratios take the median);
2. the engine alone, partitioned: one machine per partition over the same
   requests split as the collectors split them (no Kafka, no store): what
   partitioning itself costs;
3. a topic of `--partitions` on a Tansu broker (the test extra), every
   request produced through the collector's KafkaWriter (idempotent,
   acks=all), read by a bare consumer: what the broker serves, the ceiling
   of any worker's wall rate here;
4. the partitioned path: 1, 2 and 4 `msgtally worker` processes draining
   such a topic into a fresh PostgreSQL database each: records/s in total
   and per worker (of wall, from the moment every partition is owned; and
   per worker CPU-second, every record over the workers' CPU from each one's
   first partition taken), the ratios of a worker's CPU rate and of its wall
   rate to (1)'s in the same run (goal >= 0.5x), PostgreSQL's CPU for the
   run, and what the store absorbed per tick (a partition's commit): rows
   per table, bytes of tables and of WAL. With `--before DIR` (a checkout of
   another commit, its C extensions built or copied in), that checkout's
   workers too, before ours at each count, each on a topic of its own;
5. with `--profile`: one more run of one worker (and of --before's) under
   py-spy: where its time goes.

Every run checks the summed tallies against the workload's ground truth, and
the verdict rows against the reference's.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    Workload,
    chunks,
    compare_tallies,
    log,
    machine_busy,
    pg_database,
    scratch_dir,
)
from sqlalchemy import Engine, text

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.kafka_log import KafkaWriter, split
from msgtally.ingest.intake.schema import Consume, Produce, Record
from msgtally.names import TALLY_FIELDS
from msgtally.reconcile import _machine
from msgtally.reconcile.config import ReconcileConfig
from msgtally.store.db import open_store
from msgtally.store.kafka_log import KafkaLog, open_log

# The broker the tests start, from the repository's tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kafka_broker import Tansu

GOAL_PER_WORKER = 0.5
Tallies = dict[tuple[str, str], dict[str, float]]
Request = tuple[float, list[Record]]  # (receipt time, records)


# ---------------------------------------------------------------------------
# The workload as requests
# ---------------------------------------------------------------------------


def requests_of(workload: Workload, size: int) -> list[Request]:
    """The workload in requests of `size` records; each received when its first id
    was produced (receipt times never go back), as a live collector would."""
    out: list[Request] = []
    at = 0.0
    for part in chunks(workload.records(), size):
        records: list[Record] = []
        for (s, m, k, g, ts, a, o), rid in part:
            records.append(
                Produce(stream=s, message_id=m, ts=ts, attempt=a, outcome=o, record_id=rid)
                if k == "produce"
                else Consume(stream=s, message_id=m, ts=ts, attempt=a, outcome=o, group=g,
                             record_id=rid)
            )  # fmt: skip
        at = max(at, min(r.ts for r in records))
        out.append((at, records))
    return out


def fresh_core(config: ReconcileConfig) -> _machine.Machine:
    c = config
    return _machine.Machine(c.deadline, c.settle, c.remember, c.latency_buckets)


def add_pairs(into: Tallies, pairs: Sequence[_machine.PairOut]) -> None:
    for stream, group, counts, latency_sum, _hist, _bins in pairs:
        row = into.setdefault((stream, group), {f: 0.0 for f in (*TALLY_FIELDS, "latency_sum")})
        for k, v in counts.items():
            row[k] += v
        row["latency_sum"] += latency_sum


@dataclass
class Alone:
    records: int
    wall: float
    cpu: float
    tallies: Tallies
    verdicts: int  # distinct (stream, id, group) verdict rows

    @property
    def rate(self) -> float:
        return self.records / self.wall

    @property
    def cpu_rate(self) -> float:
        return self.records / self.cpu


def engine_alone(
    bodies: Sequence[Sequence[tuple[float, bytes]]], final: float, drain_every: int,
    config: ReconcileConfig, n_records: int,
) -> Alone:  # fmt: skip
    """`bodies[m]`: machine m's (receipt time, log body) in order; each applied and
    judged at its receipt time, every machine drained every `drain_every` bodies."""
    cores = [fresh_core(config) for _ in bodies]
    tallies: Tallies = {}
    keys: set[tuple[str, str, str]] = set()

    def drain(core: _machine.Machine) -> None:
        pairs, rows, _missing, _errors = core.drain()
        add_pairs(tallies, pairs)
        keys.update((r[0], r[1], r[2]) for r in rows)

    gc.collect()
    started, cpu0 = time.perf_counter(), time.process_time()
    for core, seq in zip(cores, bodies, strict=True):
        for i, (at, body) in enumerate(seq, 1):
            core.apply(body, at)
            core.advance(at, at)
            if i % drain_every == 0:
                drain(core)
        core.advance(final, final)
        drain(core)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    return Alone(n_records, wall, cpu, tallies, len(keys))


# ---------------------------------------------------------------------------
# The partitioned path
# ---------------------------------------------------------------------------


def produce(log_: KafkaLog, partitions: int, requests: Sequence[Request], final: float) -> list[
        list[int]]:  # fmt: skip
    """Every request through the collector's writer, one after the other (so each
    partition holds its slices in request order), then a heartbeat at `final` on
    every partition. Returns per partition the records of each message."""
    per_message: list[list[int]] = [[] for _ in range(partitions)]
    writer = KafkaWriter(log_, partitions, heartbeat_every=1e9).start()  # our clocks only
    try:
        for i, (at, records) in enumerate(requests):
            writer.append(records, None, at)
            for p, slice_ in split(records, partitions).items():
                per_message[p].append(len(slice_))
            if i % 200 == 0:
                log(f"  produced {i}/{len(requests)} requests")
        writer.beat(final)
    finally:
        writer.close()
    for counts in per_message:
        counts.append(0)
    return per_message


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Snapshot:
    rows: dict[str, tuple[int, int, int]]  # table: (inserted, updated, deleted)
    sizes: dict[str, int]  # table: bytes, indexes and TOAST included
    wal: int  # the cluster's WAL position (every database's writes)


def snapshot(conn: Any) -> Snapshot:
    """Every table of the store: rows written so far, bytes."""
    conn.execute(text("SELECT pg_stat_clear_snapshot()"))
    stats = conn.execute(text(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, pg_total_relation_size(relid) "
        "FROM pg_stat_user_tables")).all()  # fmt: skip
    rows = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in stats}
    sizes = {r[0]: int(r[4]) for r in stats}
    wal = int(conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'")).scalar_one())
    return Snapshot(rows, sizes, wal)


def summed_tallies(store: Engine) -> Tallies:
    cols = ", ".join(f"sum({f})" for f in (*TALLY_FIELDS, "latency_sum"))
    with store.connect() as conn:
        rows = conn.execute(text(f"SELECT stream, grp, {cols} FROM tallies GROUP BY stream, grp"))
        return {
            (r[0], r[1]): dict(zip((*TALLY_FIELDS, "latency_sum"), map(float, r[2:]), strict=True))
            for r in rows
        }


@dataclass
class Run:
    workers: int
    label: str
    records: int
    launch_to_done: float
    steady: float  # seconds from every partition owned to done
    steady_records: int
    worker_cpu: list[float]  # each from its first partition taken to done
    pg_cpu: float
    ticks: int
    rows: dict[str, int]
    table_bytes: dict[str, int]
    wal_bytes: int
    exact: bool
    verdicts: int
    profile: list[str]


def worker_cmd(log_: KafkaLog, url: str, config: ReconcileConfig) -> list[str]:
    return [sys.executable, "-m", "msgtally.cli", "worker", "--log", str(log_), "--db", url,
            "--settle", str(config.settle), "--log-level", "warning"]  # fmt: skip


def records_below(per_message: Sequence[Sequence[int]], offsets: dict[int, int]) -> int:
    return sum(sum(per_message[p][:o]) for p, o in offsets.items())


def drain_with_workers(
    log_: KafkaLog, per_message: Sequence[Sequence[int]], n: int,
    workload: Workload, reference: Alone, config: ReconcileConfig, work: Path,
    profile_seconds: float = 0.0, code: Path | None = None,
) -> Run:  # fmt: skip
    total = sum(map(sum, per_message))
    ends = {p: len(counts) for p, counts in enumerate(per_message)}
    with pg_database("msgtally_bench_dist") as url:
        store = open_store(url)
        open_log(store, str(log_))  # the partitions registered once, before the workers
        with store.connect() as conn:
            before = snapshot(conn)
            me = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            db = conn.execute(text("SELECT current_database()")).scalar_one()
        outs = [(work / f"worker-{n}-{i}.log").open("wb") for i in range(n)]
        started = time.perf_counter()
        # Run from the scratch directory: `python -m` puts the working directory
        # first on the path, and a checkout there would shadow `code`.
        env = {**os.environ, "PYTHONPATH": str(code)} if code else None
        procs = [subprocess.Popen(worker_cmd(log_, url, config), stdout=out, env=env, cwd=work,
                                  stderr=subprocess.STDOUT) for out in outs]  # fmt: skip
        names = [f"{os.uname().nodename}:{p.pid}" for p in procs]
        owners = set(names)
        # A worker's CPU counts from its first partition taken (its start, imports
        # and the group's join left out) with every record: with several workers,
        # the first to join feeds until the group rebalances, before all own theirs.
        cpu_at_take: list[float | None] = [None] * n
        steady_at: float | None = None
        steady_from = 0
        spy: subprocess.Popen[bytes] | None = None
        pg_pids: set[int] = set()
        try:
            while True:
                for p in procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"a worker exited ({p.returncode}): see {work}")
                with store.connect() as conn:
                    rows = conn.execute(
                        text("SELECT part, owner, next_offset FROM partitions")
                    ).all()
                    pg_pids |= {int(r[0]) for r in conn.execute(text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> :me"),
                        {"db": db, "me": me})}  # fmt: skip
                offsets = {int(r[0]): int(r[2]) for r in rows}
                owning = {r[1] for r in rows}
                for i, (name, p) in enumerate(zip(names, procs, strict=True)):
                    if cpu_at_take[i] is None and name in owning:
                        cpu_at_take[i] = cpu_of(p.pid)
                if steady_at is None and {r[1] for r in rows} == owners:
                    steady_at = time.perf_counter()
                    steady_from = records_below(per_message, offsets)
                    log(
                        f"  {n} worker(s): every partition owned after "
                        f"{steady_at - started:.1f} s, {steady_from:,} records committed"
                    )
                    if profile_seconds:
                        spy = subprocess.Popen(
                            [py_spy(), "record", "-p", str(procs[0].pid), "-r", "200",
                             "-d", str(int(profile_seconds)), "-f", "raw", "-o",
                             str(work / "profile.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                if offsets == ends:
                    break
                if time.perf_counter() - started > 1800:
                    raise RuntimeError("the workers did not drain the topic in 30 minutes")
                time.sleep(0.05)
            done = time.perf_counter()
            worker_cpu = [cpu_of(p.pid) - (c or 0.0) for p, c in zip(procs, cpu_at_take,
                                                                      strict=True)]  # fmt: skip
            log(f"  {n} worker(s): drained {done - steady_at:.1f} s after, worker CPU "
                f"{', '.join(f'{c or 0:.2f}' for c in cpu_at_take)} s at their first take, "
                f"{', '.join(f'{c:.2f}' for c in worker_cpu)} s more")  # fmt: skip
            pg_cpu = sum(c for c in map(cpu_of, pg_pids) if c == c)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            for out in outs:
                out.close()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
        time.sleep(1.0)  # the workers' backends have reported their statistics
        with store.connect() as conn:
            after = snapshot(conn)
            ticks = after.rows["partitions"][1] - before.rows["partitions"][1]
            takes = int(conn.execute(text("SELECT sum(epoch) FROM partitions")).scalar_one())
            verdicts = int(conn.execute(text("SELECT count(*) FROM verdicts")).scalar_one())
        got = summed_tallies(store)
        store.dispose()
    problems = compare_tallies(workload.expected, got)
    problems += compare_tallies(reference.tallies, got)
    for p in problems[:10]:
        log(f"  {n} worker(s): {p}")
    if verdicts != reference.verdicts:
        problems.append(f"verdict rows {verdicts}, the engine alone {reference.verdicts}")
        log(f"  {n} worker(s): {problems[-1]}")
    rows = {t: sum(after.rows[t]) - sum(before.rows.get(t, (0, 0, 0))) for t in after.rows}
    profile: list[str] = []
    if profile_seconds and (work / "profile.txt").exists():
        profile = summarize_profile(work / "profile.txt")
    assert steady_at is not None
    return Run(
        workers=n, label=f"{n} before" if code else str(n), records=total,
        launch_to_done=done - started, steady=done - steady_at,
        steady_records=total - steady_from, worker_cpu=worker_cpu, pg_cpu=pg_cpu,
        ticks=ticks - takes, rows=rows,
        table_bytes={t: after.sizes[t] - before.sizes.get(t, 0) for t in after.sizes},
        wal_bytes=after.wal - before.wal, exact=not problems, verdicts=verdicts,
        profile=profile,
    )  # fmt: skip


def bare_consumer(log_: KafkaLog, per_message: Sequence[Sequence[int]], records: int) -> float:
    """Records/s of a consumer that only reads every message of the topic, with the
    workers' consumer settings: what the broker can serve on this machine."""
    from confluent_kafka import Consumer

    want = sum(len(counts) for counts in per_message)
    consumer = Consumer({"bootstrap.servers": log_.bootstrap, "group.id": f"bare.{log_.topic}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([log_.topic])
    got, started = 0, 0.0
    try:
        while got < want:
            batch = consumer.consume(2000, 1.0)
            if batch and not started:
                started = time.perf_counter()  # from the first message: the join excluded
            got += sum(1 for m in batch if m.error() is None)
        return records / (time.perf_counter() - started)
    finally:
        consumer.close()


# ---------------------------------------------------------------------------
# Where a worker's time goes
# ---------------------------------------------------------------------------

# Frames that name a part of the worker's loop, most specific first (the names
# of this checkout's functions, and of those before them, for --before).
PARTS = (
    (("copy_verdicts", "write_verdicts"), "commit: verdict rows"),
    (("add_pairs", "write_pairs"), "commit: tallies, buckets, sketch, minute and hour rows"),
    (("replace_in_flight", "write_in_flight"), "commit: the in-flight snapshot"),
    (("write_missing",), "commit: missing records"),
    (("write_errors",), "commit: error classes"),
    (("_save_checkpoints", "_save_checkpoint"), "commit: checkpoints"),
    (("_drain", "_hold"), "draining the machines (at each minute and commit; in_flight, dumps)"),
    (("_move",), "commit: the fence"),
    (("commit",), "commit: the rest (the transaction, the fence, drains)"),
    (("decode_message",), "feed: decoding the message"),
    (("feed",), "feed: the state machine (Machine.feed: apply and judge)"),
    (("consume",), "poll: librdkafka's consume"),
    (("step",), "the loop itself"),
)


def summarize_profile(path: Path) -> list[str]:
    """py-spy's raw stacks, shares of the samples per part of the worker's loop."""
    shares: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        names = [frame.split(" (", 1)[0] for frame in stack.split(";")]
        part = "elsewhere (start, rebalances, scans)"
        for frames, label in PARTS:
            if any(name == f or name.endswith("." + f) for name in names for f in frames):
                part = label
                break
        shares[part] += n
    return [f"{share / total:6.1%}  {part}" for part, share in shares.most_common()]


def py_spy() -> str:
    """py-spy beside this Python (a venv), else on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


# ---------------------------------------------------------------------------


@contextlib.contextmanager
def broker(work: Path) -> Iterator[Tansu]:
    with Tansu(work / "tansu.log") as started:
        yield started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", type=int, default=300_000, help="produced ids (default 300k)")
    ap.add_argument("--request", type=int, default=2000,
                    help="records a request (default 2000)")  # fmt: skip
    ap.add_argument("--partitions", type=int, default=64,
                    help="the topic's partitions (default 64, topic create's)")  # fmt: skip
    ap.add_argument("--workers", default="1,2,4", help="worker counts, in turn (default 1,2,4)")
    ap.add_argument("--drain", type=int, default=10,
                    help="the reference drains every N bodies (default 10)")  # fmt: skip
    ap.add_argument("--profile", action="store_true",
                    help="then one more run of one worker under py-spy")  # fmt: skip
    ap.add_argument("--keep", help="keep the worker logs and the profile in this directory")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of the engine alone (default 3; the ratios take the median)")
    ap.add_argument("--before", type=Path,
                    help="a checkout of another commit: its workers run too, before ours")
    args = ap.parse_args()

    busy0 = machine_busy()
    load = os.getloadavg()[0]
    config = ReconcileConfig()
    workload = Workload(args.ids)
    log(f"building {args.ids:,} ids as requests of {args.request} records")
    requests = requests_of(workload, args.request)
    final = workload.now_after_deadlines(config.settle)
    n_records = workload.n_records
    whole = [[(at, logbody.encode(rs, None)) for at, rs in requests]]
    sliced: list[list[tuple[float, bytes]]] = [[] for _ in range(args.partitions)]
    for at, rs in requests:
        for p, slice_ in split(rs, args.partitions).items():
            sliced[p].append((at, logbody.encode(slice_, None)))

    log("1. the engine alone")
    alones = []
    for _ in range(args.repeat):
        alones.append(engine_alone(whole, final, args.drain, config, n_records))
        log(f"   {alones[-1].rate:,.0f} records/s ({alones[-1].cpu_rate:,.0f} per CPU second)")
    alones.sort(key=lambda a: a.cpu_rate)
    alone = alones[len(alones) // 2]
    exact_alone = all(not compare_tallies(workload.expected, a.tallies) for a in alones)
    log(f"2. the engine alone, {args.partitions} machines")
    parted = engine_alone(sliced, final, args.drain, config, n_records)
    exact_parted = not compare_tallies(workload.expected, parted.tallies)
    log(f"   {parted.rate:,.0f} records/s, {'exact' if exact_parted else 'WRONG'}")

    runs: list[Run] = []
    counts = [int(x) for x in args.workers.split(",")]
    produced: list[float] = []
    with scratch_dir(args.keep) as work, broker(work) as tansu:

        def topic() -> tuple[KafkaLog, list[list[int]]]:
            """A fresh topic with every request on it: a consumer group of Tansu's
            that every member left does not always take new members."""
            log_ = KafkaLog(tansu.bootstrap, f"msgtally-log-{len(produced)}")
            subprocess.run(
                [sys.executable, "-m", "msgtally.cli", "topic", "create", "--log", str(log_),
                 "--partitions", str(args.partitions)], check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            t0 = time.perf_counter()
            per_message = produce(log_, args.partitions, requests, final)
            produced.append(n_records / (time.perf_counter() - t0))
            log(f"   {len(requests)} requests to {log_}: {produced[-1]:,.0f} records/s "
                "through the collector's writer")  # fmt: skip
            return log_, per_message

        log("3. the broker alone: a bare consumer reads a topic")
        fetched = bare_consumer(*topic(), n_records)
        log(f"   {fetched:,.0f} records/s")
        log("4. the workers")
        for n in counts:
            if args.before:
                log(f"   {n} worker(s) of {args.before}")
                runs.append(drain_with_workers(*topic(), n, workload, alone, config, work,
                                               code=args.before))  # fmt: skip
            log(f"   {n} worker(s)")
            runs.append(drain_with_workers(*topic(), n, workload, alone, config, work))
        profiled: list[Run] = []
        for code in ([args.before, None] if args.before else [None]) if args.profile else []:
            log(f"5. one worker{f' of {code}' if code else ''} under py-spy")
            seconds = max(r.steady for r in runs) * 1.5 if runs else 20.0
            profiled.append(drain_with_workers(*topic(), 1, workload, alone, config, work,
                                               profile_seconds=seconds, code=code))  # fmt: skip
        busy1 = machine_busy()

    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    print()
    print(
        f"== the engine past one machine: {args.ids:,} ids, {n_records:,} records in "
        f"{len(requests)} requests of {args.request}, {args.partitions} partitions "
        f"(load average {load:.1f} at start, machine {busy:.0%} busy over the run) =="
    )
    print(
        f"engine alone (reference):      {alone.rate:12,.0f} records/s, "
        f"{alone.cpu_rate:,.0f} per CPU second (median of {len(alones)}: "
        f"{alones[0].cpu_rate:,.0f}-{alones[-1].cpu_rate:,.0f}); "
        f"{'exact' if exact_alone else 'WRONG'}"
    )
    print(
        f"engine alone, {args.partitions} machines:    {parted.rate:12,.0f} records/s "
        f"({parted.rate / alone.rate:.2f}x); {'exact' if exact_parted else 'WRONG'}"
    )
    print(
        f"producing through KafkaWriter: {min(produced):12,.0f}-{max(produced):,.0f} records/s "
        "(one collector thread, each request acknowledged before the next)"
    )
    print(
        f"the broker alone:              {fetched:12,.0f} records/s (a bare consumer reads "
        "the topic: no worker drains it faster)"
    )
    print()
    print(
        "workers | total rec/s | per worker | per worker CPU-s | ratio per CPU-s (goal >= "
        f"{GOAL_PER_WORKER}x) | ratio per worker, wall | PostgreSQL CPU/record | from launch "
        "| exact"
    )
    for r in runs:
        print(line_of(r, alone))
    print()
    print("what the store absorbed per tick (one partition's commit):")
    for r in runs:
        per = max(1, r.ticks)
        detail = ", ".join(f"{t} {v / per:.1f}" for t, v in r.rows.items() if v)
        print(f"  {r.label} worker(s): {r.ticks} ticks ({r.ticks / r.steady:,.0f}/s), "
              f"{sum(r.rows.values()) / per:.1f} rows a tick ({detail}); tables grew "
              f"{sum(r.table_bytes.values()) / per / 1024:.1f} KiB a tick "
              f"({sum(r.table_bytes.values()) / 2**20:.1f} MiB, {r.verdicts:,} verdict rows); "
              f"WAL {r.wal_bytes / per / 1024:.1f} KiB a tick (the cluster's: other databases "
              "too)")  # fmt: skip
    for run in profiled:
        print()
        print("one worker under py-spy (its run: " + line_of(run, alone).strip() + "):")
        for share in run.profile:
            print(f"  {share}")


def line_of(r: Run, alone: Alone) -> str:
    rate = r.steady_records / r.steady
    cpu = sum(r.worker_cpu)
    per_cpu = r.records / cpu if cpu else float("nan")
    return (f"{r.label:>8} | {rate:11,.0f} | {rate / r.workers:10,.0f} | {per_cpu:16,.0f} | "
            f"{per_cpu / alone.cpu_rate:32.3f}x | {rate / r.workers / alone.rate:21.3f}x | "
            f"{r.pg_cpu / r.records * 1e6:18.1f} us | {r.launch_to_done:9.1f} s | "
            f"{'yes' if r.exact else 'NO'}")  # fmt: skip


if __name__ == "__main__":
    main()
