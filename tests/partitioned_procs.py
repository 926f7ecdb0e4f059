"""Workers and a steady producer for the Kafka log's fault tests: `msgtally
worker` as real processes (so they can be SIGKILLed, SIGSTOPped, SIGTERMed),
and the collectors' write path producing a history at a steady pace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select

from msgtally.ingest.intake.kafka_log import KafkaWriter
from msgtally.oracle import Record
from msgtally.store.kafka_log import KafkaLog
from msgtally.store.tables import partitions
from tests.partitioned_support import CONFIG, batch_of

SESSION_TIMEOUT = 3.0  # seconds: a stalled worker's partitions move after this


def config_flags() -> list[str]:
    """tests.partitioned_support.CONFIG as the command line gives it."""
    flags = ["--settle", str(CONFIG.settle)]
    for stream, seconds in CONFIG.stream_deadlines.items():
        flags += ["--stream-deadline", f"{stream}={seconds}"]
    for stream, groups in CONFIG.expected_groups.items():
        flags += ["--expect", f"{stream}={','.join(groups)}"]
    return flags


class WorkerProcess:
    """`msgtally worker` in a process of its own, its log in a file."""

    def __init__(
        self, url: str, log: KafkaLog, logs: Path, name: str, *,
        session_timeout: float = SESSION_TIMEOUT, extra: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.name = name
        self.log_path = logs / f"worker-{name}.log"
        command = [
            sys.executable, "-m", "msgtally.cli", "worker", "--db", url, "--log", str(log),
            *config_flags(), "--commit-every", "0.2", "--checkpoint-every", "1",
            "--session-timeout", str(session_timeout), *extra,
        ]  # fmt: skip
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a clean leave: last commits, then out of the group); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")


def stop_all(workers: Sequence[WorkerProcess]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            w.kill()


def owners(store: Engine) -> dict[int, tuple[int, int]]:
    """Each partition's owner (the pid in the worker's name) and epoch."""
    with store.connect() as conn:
        rows = conn.execute(select(partitions.c.part, partitions.c.owner, partitions.c.epoch))
        return {int(p): (_pid(o), int(e)) for p, o, e in rows}


def _pid(owner: str) -> int:
    return int(owner.rsplit(":", 1)[1]) if ":" in owner else 0


def wait_for(what: str, check: object, timeout: float = 60.0) -> None:
    """Until `check()` is true."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class SteadyProducer:
    """Produces the requests through the collectors' write path (KafkaWriter) at
    `rate` requests a second, in a thread, received now; `sent` counts them."""

    def __init__(self, log: KafkaLog, count: int, requests: Sequence[Sequence[Record]],
                 rate: float) -> None:  # fmt: skip
        self.writer = KafkaWriter(log, count).start()
        self.requests, self.rate = requests, rate
        self.sent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SteadyProducer:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for request in self.requests:
                self.writer.append(batch_of(request).records, None, time.time())
                self.sent += 1
                time.sleep(1 / self.rate)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, final: float) -> None:
        """Every request produced, then a heartbeat at `final` (past every deadline)."""
        self.thread.join(600)
        assert self.error is None, self.error
        assert self.sent == len(self.requests)
        self.writer.beat(final)
        self.writer.close()


class CollectorProcess:
    """`msgtally serve --log kafka://...` in a process of its own, its log in a
    file; ready once /readyz answers."""

    def __init__(self, url: str, log: KafkaLog, logs: Path, name: str) -> None:
        from msgtally.server import free_port

        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / f"collector-{name}.log"
        command = [
            sys.executable, "-m", "msgtally.cli", "serve", "--db", url, "--log", str(log),
            "--port", str(self.port), "--no-otlp-grpc", *config_flags(),
        ]  # fmt: skip
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for(f"collector {name} to be ready", self._ready, 30)

    def _ready(self) -> bool:
        import httpx

        assert self.proc.poll() is None, self.text()[-3000:]
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()

    def refused(self) -> dict[str, float]:
        """Its /metrics: POST /v1/records refused, by reason."""
        import httpx

        from msgtally.names import INGEST_REJECTED

        answer = httpx.get(f"{self.url}/metrics", timeout=10)
        if answer.status_code != 200:  # a stale pooled connection after the store restarted
            answer = httpx.get(f"{self.url}/metrics", timeout=10)
        answer.raise_for_status()
        text = answer.text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(f"{INGEST_REJECTED}_total{{"):
                labels, value = line.rsplit(" ", 1)
                out[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
        return out

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")


class ShimFeeder:
    """The requests' records through the real shim's shipper (to `url`), `rate`
    requests a second, in a thread; `sent` counts the requests put. With
    `whole`, each request is flushed before the next: one shim request each,
    so that an id's records arrive together however long the collector takes
    (an id's records further apart than --settle are judged apart, by design)."""

    def __init__(self, url: str, requests: Sequence[Sequence[Record]], rate: float, *,
                 whole: bool = False) -> None:  # fmt: skip
        from msgtally.ingest.shim.shipper import Shipper

        # Requests of ~40 records; resends within a second (the backoff's cap).
        self.shipper = Shipper(url, source="svc-1", batch_size=200, flush_interval=0.2,
                               timeout=30)  # fmt: skip
        self.requests, self.rate, self.whole = requests, rate, whole
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ShimFeeder:
        self.thread.start()
        return self

    def _run(self) -> None:
        for request in self.requests:
            for r in request:
                self.shipper.put(tuple(r))
            if self.whole:
                while not self.shipper.flush(60):
                    pass
            self.sent += 1
            time.sleep(1 / self.rate)

    def finish(self, timeout: float = 120.0) -> None:
        """Every record put and answered 200 (none dropped)."""
        self.thread.join(timeout)
        assert self.sent == len(self.requests)
        assert self.shipper.flush(timeout)
        self.shipper.close()
        assert not self.shipper.dropped, self.shipper.dropped
