"""Shared pieces of the benchmarks: the synthetic workload and its ground truth,
the workload as wire records and as log bodies, a fresh PostgreSQL database,
a collector process and an RSS sampler.

Not part of the package: the scripts in bench/ import it as a sibling module.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from msgtally.names import TALLY_FIELDS

STREAMS = ("orders", "payments", "shipments", "emails")
GROUPS = ("billing", "analytics")
DEADLINE = 300.0  # ReconcileConfig's default: the generator's late/lost cases rely on it
PG_ADMIN_URL = os.environ.get(
    "MSGTALLY_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
T_START = 1_700_000_000.0

# (stream, message_id, kind, grp, ts, attempt, outcome): what the join reads.
Rec = tuple[str, str, str, str, float, int, str]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def clock() -> Timing:
    return time.perf_counter(), time.process_time()


def since(start: Timing) -> Timing:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def fmt_rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "inf/s"


# ---------------------------------------------------------------------------
# The workload and its ground truth
# ---------------------------------------------------------------------------


@dataclass
class Workload:
    """Produced ids with injected loss, duplicates, retries, dead letters, lateness.

    Per id: one produce (2% retried: error then ok; 0.2% indeterminate: error
    only). Per id and group (both groups consume every stream): 1% lost (no
    consume), 0.1% late (consumed after the deadline), 0.1% dead-lettered
    (error, then dead_letter), 1% consume retry (error, then ok), and 0.5% of
    delivered ones duplicated (a second ok delivery). 0.05% extra ids are
    consumed but never produced (unexpected).
    """

    ids: int
    seed: int = 1
    first_id: int = 0  # ids are numbered from here (a second load continues)
    spacing: float = 0.001  # seconds between two produced ids
    id_order: str = "random"  # random: uuid4-like ids; sequential: time-ordered ids
    with_record_id: bool = False  # records carry a shim record_id (+ producer, seq)
    p_indeterminate: float = 0.002
    p_produce_retry: float = 0.02
    p_lost: float = 0.01
    p_late: float = 0.001
    p_dead_letter: float = 0.001
    p_consume_retry: float = 0.01
    p_dup: float = 0.005
    p_unexpected: float = 0.0005
    expected: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    n_records: int = 0
    last_ts: float = 0.0

    def now_after_deadlines(self, settle: float = 10.0) -> float:
        return self.last_ts + DEADLINE + settle + 60.0

    def records(self) -> Iterator[tuple[Rec, str | None]]:
        """Yield (record, record_id or None); fills `expected` as it goes."""
        rnd = random.Random(self.seed * 1_000_003 + self.first_id)
        rand = rnd.random
        getbits = rnd.getrandbits
        exp = {
            (s, g): {f: 0 for f in (*TALLY_FIELDS, "latency_sum")} for s in STREAMS for g in GROUPS
        }
        self.expected = exp  # type: ignore[assignment]
        n_rec = 0
        last_ts = 0.0
        ns = len(STREAMS)
        cut_indet = self.p_indeterminate
        cut_pretry = cut_indet + self.p_produce_retry
        cut_lost = self.p_lost
        cut_late = cut_lost + self.p_late
        cut_dl = cut_late + self.p_dead_letter
        cut_cretry = cut_dl + self.p_consume_retry
        random_ids = self.id_order == "random"
        rid = self.with_record_id

        def mid_of(i: int) -> str:
            if random_ids:
                h = f"{getbits(128):032x}"
                return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
            return f"{i:012x}-0000-4000-a000-{i * 2654435761 % (1 << 48):012x}"

        for i in range(self.first_id, self.first_id + self.ids):
            stream = STREAMS[i % ns]
            mid = mid_of(i)
            t0 = T_START + i * self.spacing
            u = rand()
            if u < cut_indet:
                produce: list[tuple[float, int, str]] = [(t0, 1, "error")]
                acked = False
            elif u < cut_pretry:
                produce = [(t0, 1, "error"), (t0 + 0.25, 2, "ok")]
                acked = True
            else:
                produce = [(t0, 1, "ok")]
                acked = True
            p_max = len(produce)
            for ts, att, out in produce:
                yield ((stream, mid, "produce", "", ts, att, out),
                       f"{mid}/p{att}" if rid else None)
                n_rec += 1
            for g in GROUPS:
                v = rand()
                lat = min(rnd.expovariate(5.0), 60.0) + 0.002
                if v < cut_lost:
                    consumes: list[tuple[float, int, str]] = []
                elif v < cut_late:
                    consumes = [(t0 + DEADLINE + 1.0 + rand() * 10.0, 1, "ok")]
                elif v < cut_dl:
                    consumes = [(t0 + lat, 1, "error"), (t0 + lat + 0.5, 2, "dead_letter")]
                elif v < cut_cretry:
                    consumes = [(t0 + lat, 1, "error"), (t0 + lat + 0.5, 2, "ok")]
                else:
                    consumes = [(t0 + lat, 1, "ok")]
                if consumes and consumes[-1][2] == "ok" and v >= cut_late and rand() < self.p_dup:
                    # A redelivery (Kafka-style re-read: attempt 1 again, later ts).
                    consumes.append((consumes[-1][0] + 1.0 + rand(), 1, "ok"))
                for k, (ts, att, out) in enumerate(consumes):
                    yield ((stream, mid, "consume", g, ts, att, out),
                           f"{mid}/{g}/{k}" if rid else None)
                    n_rec += 1
                    last_ts = max(last_ts, ts)
                # Ground truth, straight from the outcome table of docs/definitions.md.
                t = exp[(stream, g)]
                ok_ts = [ts for ts, _, out in consumes if out == "ok"]
                in_time = any(ts <= t0 + DEADLINE for ts in ok_ts)
                if acked:
                    t["produced"] += 1
                    if in_time:
                        t["delivered"] += 1
                    else:
                        t["lost"] += 1
                        if ok_ts:
                            t["late"] += 1
                    if any(out == "dead_letter" for _, _, out in consumes):
                        t["dead_lettered"] += 1
                    if ok_ts:
                        t["latency_count"] += 1
                        t["latency_sum"] += min(ok_ts) - t0
                elif ok_ts:
                    t["recovered"] += 1
                if len(ok_ts) > 1:
                    t["duplicated"] += len(ok_ts) - 1
                if max([p_max, *(att for _, att, _ in consumes)]) > 1:
                    t["retried"] += 1
                t["attempts"] += len(consumes)
                t["consume_errors"] += sum(1 for _, _, out in consumes if out == "error")
            last_ts = max(last_ts, t0 + 0.25)
            if rand() < self.p_unexpected:  # an id consumed, never produced
                umid = "u-" + mid_of(i)
                for g in GROUPS:
                    ts = t0 + 0.1
                    yield ((stream, umid, "consume", g, ts, 1, "ok"),
                           f"{umid}/{g}" if rid else None)
                    n_rec += 1
                    exp[(stream, g)]["unexpected"] += 1
        self.n_records = n_rec
        self.last_ts = last_ts


def chunks(it: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


# ---------------------------------------------------------------------------
# The workload as the collector takes it
# ---------------------------------------------------------------------------


def wire(rec: Rec, record_id: str | None) -> dict[str, Any]:
    """A record as a shim sends it (JSON object)."""
    stream, mid, kind, grp, ts, attempt, outcome = rec
    out: dict[str, Any] = {"stream": stream, "kind": kind, "message_id": mid, "ts": ts,
                           "attempt": attempt, "outcome": outcome}  # fmt: skip
    if grp:
        out["group"] = grp
    if record_id is not None:
        out["record_id"] = record_id
    return out


def log_bodies(workload: Workload, batch: int, numbered: bool = False) -> list[bytes]:
    """The workload as the log holds it (msgtally.ingest.intake.logbody), `batch` records a body.

    `numbered`: as shims send them, each record with its producer (one per stream
    and kind, and group) and its seq, the engine checking the sequences."""
    from msgtally.ingest.intake import logbody
    from msgtally.ingest.intake.schema import Consume, Produce

    out = []
    last: dict[tuple[str, str, str], int] = {}
    for part in chunks(workload.records(), batch):
        records = []
        for (s, m, k, g, ts, a, o), rid in part:
            producer = seq = None
            if numbered:
                last[(s, k, g)] = seq = last.get((s, k, g), 0) + 1
                producer = f"shim-{s}-{k}-{g}"
            records.append(
                Produce(stream=s, message_id=m, ts=ts, attempt=a, outcome=o, record_id=rid,
                        producer=producer, seq=seq)
                if k == "produce"
                else Consume(stream=s, message_id=m, ts=ts, attempt=a, outcome=o, group=g,
                             record_id=rid, producer=producer, seq=seq)
            )  # fmt: skip
        out.append(logbody.encode(records, [] if numbered else None))  # type: ignore[arg-type]
    return out


@contextlib.contextmanager
def pg_database(prefix: str = "msgtally_bench") -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def scratch_dir(keep: str | None = None) -> Iterator[Path]:
    if keep:
        p = Path(keep)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="msgtally-bench-") as d:
        yield Path(d)


# ---------------------------------------------------------------------------
# Checking the tallies
# ---------------------------------------------------------------------------


def read_tallies(store: Engine) -> dict[tuple[str, str], dict[str, float]]:
    with store.connect() as conn:
        rows = conn.execute(text("SELECT * FROM tallies")).mappings().all()
    return {(r["stream"], r["grp"]): dict(r) for r in rows}


def compare_tallies(
    expected: dict[tuple[str, str], dict[str, float]],
    got: dict[tuple[str, str], dict[str, float]],
) -> list[str]:
    """Differences, empty when every counter matches (latency_sum to 1e-6 relative)."""
    problems = []
    for key in sorted(set(expected) | set(got)):
        e, g = expected.get(key), got.get(key)
        if e is None or g is None:
            problems.append(f"{key}: expected {'no row' if e is None else 'a row'}")
            continue
        for f, ev in e.items():
            gv = g.get(f)
            if gv is None:
                problems.append(f"{key} {f}: missing")
            elif f == "latency_sum":
                if not math.isclose(float(gv), ev, rel_tol=1e-6, abs_tol=1e-6):
                    problems.append(f"{key} {f}: expected {ev:.6f}, got {float(gv):.6f}")
            elif int(gv) != ev:
                problems.append(f"{key} {f}: expected {ev}, got {gv}")
    return problems


def total_of(tallies: dict[tuple[str, str], dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for t in tallies.values():
        for f, v in t.items():
            if isinstance(v, (int, float)):
                out[f] += v
    return dict(out)


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def vm_hwm_bytes() -> int:
    """Peak RSS of this process image (VmHWM): unlike ru_maxrss, not inherited
    from the parent across fork and exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Peak RSS of this process, sampled every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies over every CPU, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])
    return total - idle, total


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


# ---------------------------------------------------------------------------
# A collector in its own process
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CollectorProcess:
    """`msgtally serve` in a child process (its own GIL); ingest only by default."""

    def __init__(
        self, db_url: str, log_path: Path, wrap: Sequence[str] = (), args: Sequence[str] = (
            "--no-reconcile",)
    ) -> None:
        self.port = free_port()
        self.grpc_port = free_port()  # OTLP/gRPC
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.cmd = [*wrap, sys.executable, "-m", "msgtally.cli", "serve", *args,
                    "--db", db_url, "--port", str(self.port), "--max-body", str(256 * 2**20),
                    "--otlp-grpc-port", str(self.grpc_port)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CollectorProcess:
        import httpx

        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        with httpx.Client() as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"collector exited: see {self.log_path}:\n"
                                       + self.log_path.read_text()[-2000:])
                try:
                    if client.get(self.url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("collector did not start in 30 s")
                time.sleep(0.05)
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU of the collector so far (from /proc)."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return float("nan")
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: uvicorn shuts down cleanly
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
