"""The engine over the Kafka log under faults: a worker killed, a worker stalled
past its session (fenced). Each ends with every figure
exactly the single engine's and the oracle's (SLIs, discrepancy ids, latency
buckets, records missing), on a real Kafka-protocol broker (Tansu) and the
real PostgreSQL; workers are real `msgtally worker` processes.

Not here yet: workers leaving cleanly under load. On Tansu 0.6.0 a member that
sends LeaveGroup can stay named group leader in later JoinGroup answers, so the
remaining members wait for an assignment nobody sends (seen in librdkafka's
cgrp debug log); a test of it failed half its runs for that reason, not ours.
Nor a collector killed between producing and answering, or the broker and the
store restarted (docs/scaling.md says what is and is not proven)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine

from msgtally.oracle import Record, oracle
from msgtally.store.db import open_store
from msgtally.store.kafka_log import KafkaLog, open_log
from tests.harness import assert_discrepancies, assert_figures, figures
from tests.kafka_broker import Tansu, started_broker
from tests.partitioned_procs import (
    SESSION_TIMEOUT,
    SteadyProducer,
    WorkerProcess,
    owners,
    stop_all,
    wait_for,
)
from tests.partitioned_support import (
    CONFIG,
    assert_same,
    committed,
    history,
    new_topic,
    single_engine,
)
from tests.partitioned_support import wait_applied as _wait_applied

PARTS = 6


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    yield from started_broker(tmp_path_factory)


@pytest.fixture
def store(pg_url: str) -> Iterator[Engine]:
    opened = open_store(pg_url)
    yield opened
    opened.dispose()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes the test starts: none outlives it."""
    started: list[WorkerProcess] = []
    yield started
    stop_all(started)


def _topic(broker: Tansu, store: Engine) -> KafkaLog:
    log = new_topic(broker, PARTS)
    assert open_log(store, str(log))[1] == PARTS
    return log


def _check(store: Engine, requests: Sequence[Sequence[Record]], final: float,
           tmp_path: Path) -> None:  # fmt: skip
    """Every figure of the store is the single engine's and the oracle's."""
    single = open_store(f"sqlite:///{tmp_path / 'single.db'}")
    try:
        single_engine(single, requests, final)
        sent = [r for request in requests for r in request]
        want = oracle(sent, deadline=CONFIG.deadline, stream_deadlines=CONFIG.stream_deadlines,
                      expected_groups=CONFIG.expected_groups)  # fmt: skip
        assert_figures(figures(store), want)
        assert_discrepancies(store, want)
        assert_same(store, single)
    finally:
        single.dispose()


def _settled(store: Engine, log: KafkaLog, workers: Sequence[WorkerProcess]) -> None:
    try:
        _wait_applied(store, log, PARTS, timeout=180)
    except AssertionError:
        for w in workers:
            print(f"--- worker {w.name} (pid {w.pid}) ---\n{w.text()[-6000:]}")
        raise


def _working(store: Engine, pid: int, at_least: int = 20) -> bool:
    """The worker `pid` owns partitions and has committed past `at_least` on each."""
    offsets = committed(store)
    mine = [p for p, (owner, _e) in owners(store).items() if owner == pid]
    return bool(mine) and all(offsets[p] >= at_least for p in mine)


def _owning(store: Engine) -> set[int]:
    """The pids of the workers that own partitions now."""
    return {pid for pid, _epoch in owners(store).values()}


def _owned_by(store: Engine, pids: set[int]) -> bool:
    return _owning(store) <= pids


def _two_under_load(
    broker: Tansu, pg_url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess],
    seed: int,
) -> tuple[KafkaLog, list[list[Record]], SteadyProducer]:
    """Workers a and b sharing the partitions while the collectors produce, a
    having committed on each of its own: the moment a fault is worth injecting."""
    log = _topic(broker, store)
    requests = history(seed, 1500, time.time() - 2000)
    workers += [WorkerProcess(pg_url, log, tmp_path, n) for n in ("a", "b")]
    a, b = workers
    wait_for("both workers to own partitions", lambda: _owning(store) == {a.pid, b.pid})
    producer = SteadyProducer(log, PARTS, requests, rate=40).start()
    wait_for("a third of the requests", lambda: producer.sent > len(requests) // 3)
    wait_for("a to commit on each of its partitions", lambda: _working(store, a.pid))
    return log, requests, producer


@pytest.mark.slow
def test_a_worker_killed_mid_tick(
    broker: Tansu, pg_url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """SIGKILL: no last commit, no leave. After its session times out, its
    partitions go to the other worker, which loads each one's checkpoint and
    replays the topic to the committed offset without writing, then goes on."""
    log, requests, producer = _two_under_load(broker, pg_url, store, tmp_path, workers, 11)
    a, b = workers
    a.signal(signal.SIGKILL)
    a.proc.wait()
    wait_for("b to own every partition", lambda: _owned_by(store, {b.pid}), 60)
    final = time.time() + 10_000
    producer.finish(final)
    _settled(store, log, workers)
    _check(store, requests, final, tmp_path)
    assert "taken" in b.text()


@pytest.mark.slow
def test_a_worker_stalled_past_its_session_is_fenced(
    broker: Tansu, pg_url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """SIGSTOP past the session timeout: its partitions move to the other worker
    (a new epoch each). Resumed, it commits nothing on them (its epoch is over:
    every such commit is rolled back) and rejoins the group; the figures stay exact."""
    log, requests, producer = _two_under_load(broker, pg_url, store, tmp_path, workers, 12)
    a, b = workers
    a.signal(signal.SIGSTOP)
    held = {p for p, (pid, _e) in owners(store).items() if pid == a.pid}
    wait_for("b to own every partition", lambda: _owned_by(store, {b.pid}), 60)
    time.sleep(SESSION_TIMEOUT)
    a.signal(signal.SIGCONT)
    wait_for("a to own partitions again", lambda: _owning(store) == {a.pid, b.pid}, 90)
    final = time.time() + 10_000
    producer.finish(final)
    _settled(store, log, workers)
    _check(store, requests, final, tmp_path)
    assert held
