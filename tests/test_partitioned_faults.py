"""The engine over the Kafka log under faults. Each ends with every figure
exactly the single engine's and the oracle's (SLIs, discrepancy ids, latency
buckets, records missing), on a real Kafka-protocol broker (Tansu) and the
real PostgreSQL; workers and collectors are real `msgtally worker` and
`msgtally serve --log` processes, fed by the real shim's shipper where a
collector is in the path.

- a worker SIGKILLed mid-tick; a worker stalled (SIGSTOP) past its session,
  fenced;
- workers added and removed under load (2 -> 4 -> 2): removed by SIGTERM,
  which commits and exits without leaving the group (Tansu 0.6.0 can keep a
  member that left named group leader, and the rest then wait for an
  assignment nobody sends: a clean-leave test failed half its runs for that);
- a collector SIGKILLed after the broker acknowledged a request's slices and
  before it answered: the shim resends to the other collector, counted once;
- PostgreSQL stopped with `-m immediate` under load and started again (a
  private cluster): workers and the collector ride through it;
- the broker unreachable (SIGSTOP) past the workers' sessions and the
  collector's produce timeout, then resumed: 503s, resends, the group formed
  again;
- the broker restarted: Tansu on S3 (moto's server) SIGKILLed under load and
  started again on the same storage and port;
- a store the topic cannot rebuild is refused by `msgtally worker`.

docs/scaling.md says what is and is not proven."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, text

from msgtally.ingest.intake.kafka_log import KafkaWriter
from msgtally.ingest.shim.announce import RetryConfig
from msgtally.ingest.shim.shipper import Shipper
from msgtally.oracle import Record
from msgtally.reconcile.partitioned.worker import unreplayable
from msgtally.store.db import open_store
from msgtally.store.kafka_log import KafkaLog, create_topic, open_log
from msgtally.store.tables import retry_configs
from tests.failover_proxy import FailoverProxy
from tests.kafka_broker import Tansu, durable_broker, started_broker
from tests.partitioned_procs import (
    SESSION_TIMEOUT,
    CollectorProcess,
    ShimFeeder,
    SteadyProducer,
    WorkerProcess,
    owners,
    stop_all,
    wait_for,
)
from tests.partitioned_support import (
    WorkerThread,
    assert_exact,
    batch_of,
    committed,
    high_watermarks,
    history,
    new_topic,
    read_topic,
)
from tests.partitioned_support import wait_applied as _wait_applied
from tests.pg_cluster import PrivateCluster, private_cluster

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


@pytest.fixture
def collectors() -> Iterator[list[CollectorProcess]]:
    """Collector processes the test starts: none outlives it."""
    started: list[CollectorProcess] = []
    yield started
    for c in started:
        c.kill()


def _topic(broker: Tansu, store: Engine) -> KafkaLog:
    log = new_topic(broker, PARTS)
    assert open_log(store, str(log))[1] == PARTS
    return log


def _check(store: Engine, requests: Sequence[Sequence[Record]], final: float,
           tmp_path: Path) -> None:  # fmt: skip
    assert_exact(store, requests, final, f"sqlite:///{tmp_path / 'single.db'}")


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


def _fed_by_the_shim(
    broker: Tansu, url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess],
    collectors: list[CollectorProcess], requests: list[list[Record]],
) -> tuple[KafkaLog, CollectorProcess, ShimFeeder]:  # fmt: skip
    """Workers a and b sharing the partitions while a collector fed by the shim
    produces, a quarter of the requests sent."""
    log = _topic(broker, store)
    workers += [WorkerProcess(url, log, tmp_path, n) for n in ("a", "b")]
    a, b = workers
    wait_for("both workers to own partitions", lambda: _owning(store) == {a.pid, b.pid})
    collectors.append(CollectorProcess(url, log, tmp_path, "c"))
    feeder = ShimFeeder(collectors[0].url, requests, rate=20, whole=True).start()
    wait_for("a quarter of the requests", lambda: feeder.sent > len(requests) // 4)
    return log, collectors[0], feeder


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


def _ship(shipper: Shipper, requests: Sequence[Sequence[Record]]) -> None:
    """The requests' records through the real shim's shipper, each request
    flushed (one shim request: an id's records together, as the history has
    them), all answered 200."""
    for request in requests:
        for r in request:
            shipper.put(tuple(r))
        assert shipper.flush(120)


def _blocked_by(store: Engine, pid: int) -> bool:
    """A session of the store waits for a lock that the session `pid` holds."""
    with store.connect() as conn:
        waiting = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": pid},
        ).scalar_one()  # fmt: skip
        return bool(waiting)


def _final_beat(log: KafkaLog) -> float:
    """A heartbeat on every partition past every deadline: every id judged."""
    final = time.time() + 10_000
    writer = KafkaWriter(log, PARTS)
    writer.beat(final)
    writer.close()
    return final


@pytest.mark.slow
def test_a_collector_killed_between_producing_and_answering(
    broker: Tansu, pg_url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess],
    collectors: list[CollectorProcess],
) -> None:  # fmt: skip
    """Collector a acknowledged by the broker for every slice of a request, then
    SIGKILLed before it answers; the shim's shipper sends the request again, through
    the address both collectors sit behind, to collector b. The request is in the
    topic twice, under two request ids, and counted once.

    The kill lands in the window by the write path's order: the slices are
    produced and acknowledged first, then the request's names, drop totals and
    retry configurations commit in the store, then the answer. The test holds a
    row of `retry_configs` that the request's transaction must write (an
    uncommitted insert of the same key), so a's request waits in the store with
    its slices in the topic; a is killed once PostgreSQL shows it waiting."""
    log = _topic(broker, store)
    requests = history(13, 600, time.time() - 2000)
    workers.append(WorkerProcess(pg_url, log, tmp_path, "w"))
    collectors += [CollectorProcess(pg_url, log, tmp_path, n) for n in ("a", "b")]
    a, b = collectors
    proxy = FailoverProxy([a.port, b.port])
    # A long flush interval: a request leaves on a full batch, an announcement or a flush.
    shipper = Shipper(proxy.url, source="svc-1", batch_size=500, flush_interval=60, timeout=60)
    third = len(requests) // 3
    try:
        _ship(shipper, requests[:third])
        before = high_watermarks(log, PARTS)
        with store.connect() as lock:
            lock.execute(insert(retry_configs).values(
                stream="s1", grp="g1", source="svc-1", acks="after", backoff_base=0.0,
                backoff_cap=0.0, jitter=0, seen_at=time.time(),
            ))  # fmt: skip
            me = lock.execute(text("SELECT pg_backend_pid()")).scalar_one()
            for r in requests[third]:
                shipper.put(tuple(r))
            shipper.announce("s1", "g1", RetryConfig())  # the next request carries it
            wait_for("a's request to wait in the store", lambda: _blocked_by(store, me))
            at_kill = high_watermarks(log, PARTS)
            a.kill()
            lock.rollback()
        _ship(shipper, requests[third + 1 :])
    finally:
        shipper.close()
        proxy.close()
    b.kill()  # every request answered; its heartbeats would move the topic's end
    final = _final_beat(log)
    _settled(store, log, workers)
    _check(store, requests, final, tmp_path)
    # The killed request: its slices were in the topic before a died ...
    killed = read_topic(log, PARTS, before, at_kill)
    assert len({rid for rid, _ids in killed}) == 1
    sent = {r.record_id for r in requests[third]}
    assert {i for _rid, ids in killed for i in ids} == sent
    # ... and are again, under another request id: b's answer to the shim's resend.
    again = read_topic(log, PARTS, at_kill, high_watermarks(log, PARTS))
    resent = {i for rid, ids in again if rid != killed[0][0] for i in ids}
    assert sent <= resent
    assert proxy.served[-1] == b.port and a.port in proxy.served


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    yield from private_cluster()


@pytest.mark.slow
def test_the_store_restarted_under_load(
    broker: Tansu, cluster: PrivateCluster, tmp_path: Path, workers: list[WorkerProcess],
    collectors: list[CollectorProcess],
) -> None:  # fmt: skip
    """PostgreSQL stopped with `-m immediate` (no checkpoint: a crash) under
    two workers and a collector fed by the shim, then started again (recovery
    from the WAL). The collector answers 503 while the store is away and the
    shim resends; the workers set their partitions aside, keep polling, and
    take each one again from its checkpoint once the store answers (a commit
    lost with the server is in the store whole or not at all). Neither a
    worker nor the collector is restarted. A private cluster on a port of its
    own: the shared server is not touched."""
    store = open_store(cluster.url)
    try:
        requests = history(14, 2000, time.time() - 2000)
        log, _collector, feeder = _fed_by_the_shim(
            broker, cluster.url, store, tmp_path, workers, collectors, requests
        )
        a = workers[0]
        wait_for("a to commit on each of its partitions", lambda: _working(store, a.pid))
        store.dispose()  # the test's own connections: not in the way of the stop
        assert feeder.sent < len(requests) * 3 // 4  # under load
        cluster.stop("immediate")
        wait_for("both workers to find the store gone",
                 lambda: all("the store failed" in w.text() for w in workers))  # fmt: skip
        cluster.start()
        feeder.finish()
        assert collectors[0].refused()["store_unavailable"] >= 1  # 503: the shim resent
        collectors[0].kill()  # every request answered; its heartbeats would move the topic's end
        final = _final_beat(log)
        _settled(store, log, workers)
        _check(store, requests, final, tmp_path)
        assert all(w.proc.poll() is None for w in workers)
        assert all("the store answers again" in w.text() for w in workers)
    finally:
        store.dispose()


@pytest.mark.slow
def test_the_broker_unreachable_past_the_sessions(
    broker: Tansu, pg_url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess],
    collectors: list[CollectorProcess],
) -> None:  # fmt: skip
    """The broker stopped (SIGSTOP: its sockets open, nothing answered) under
    two workers and a collector fed by the shim, until the collector has
    answered 503 (a request's slices not acknowledged within its timeout: the
    shim sends it again) and past the workers' session timeout; then resumed.
    The workers' sessions lapse and the group forms again: every partition is
    taken again from the store; the figures are exact. A real restart, on
    durable storage, is the next test."""
    assert broker.proc is not None
    requests = history(15, 1500, time.time() - 2000)
    log, collector, feeder = _fed_by_the_shim(
        broker, pg_url, store, tmp_path, workers, collectors, requests
    )
    epochs = {p: e for p, (_pid, e) in owners(store).items()}
    assert feeder.sent < len(requests) * 3 // 4  # under load
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        wait_for("the collector to answer 503",
                 lambda: collector.refused()["store_unavailable"] >= 1, 60)  # fmt: skip
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    feeder.finish()
    collector.kill()  # every request answered; its heartbeats would move the topic's end
    final = _final_beat(log)
    _settled(store, log, workers)
    _check(store, requests, final, tmp_path)
    assert all(w.proc.poll() is None for w in workers)
    assert all(e > epochs[p] for p, (_pid, e) in owners(store).items())  # taken again


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Tansu]:
    yield from durable_broker(tmp_path)


@pytest.mark.slow
def test_the_broker_restarted_under_load(
    durable: Tansu, pg_url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess],
    collectors: list[CollectorProcess],
) -> None:  # fmt: skip
    """The broker, on durable storage (Tansu on S3: moto's server, which runs
    on), SIGKILLed under two workers and a collector fed by the shim; away
    until the collector has answered 503 (the shim sends the request again)
    and past the workers' session timeout; then started again on the same
    port and storage. It comes back with every message it acknowledged (each
    partition's end at least where it was before the kill); the workers
    reconnect on their own, the group forms again, every partition is taken
    again from the store, and the figures are exact."""
    # S3 through moto: ~8 requests a second. The history's last request names
    # g4, a group new to every partition: announced in the log, it is back-filled
    # at that request's clock on each partition, however slow the broker.
    requests = history(18, 600, time.time() - 2000)
    log, collector, feeder = _fed_by_the_shim(
        durable, pg_url, store, tmp_path, workers, collectors, requests
    )
    epochs = {p: e for p, (_pid, e) in owners(store).items()}
    acknowledged = high_watermarks(log, PARTS)
    assert feeder.sent < len(requests) * 3 // 4  # under load
    durable.kill()
    wait_for("the collector to answer 503",
             lambda: collector.refused()["store_unavailable"] >= 1, 60)  # fmt: skip
    time.sleep(SESSION_TIMEOUT)
    durable.restart()
    back = high_watermarks(log, PARTS)
    assert all(back[p] >= acknowledged[p] for p in range(PARTS)), (acknowledged, back)
    feeder.finish()
    collector.kill()  # every request answered; its heartbeats would move the topic's end
    # Tansu on S3 answers a partition's end (ListOffsets) as the first offset of
    # the batch written last, to the second as S3 lists objects, + 1: the final
    # beat, one message a partition alone in its second, makes that the true end.
    time.sleep(1.1)
    final = _final_beat(log)
    _settled(store, log, workers)
    _check(store, requests, final, tmp_path)
    assert all(w.proc.poll() is None for w in workers)
    assert all(e > epochs[p] for p, (_pid, e) in owners(store).items())  # taken again


@pytest.mark.slow
def test_workers_added_and_removed_under_load(
    broker: Tansu, pg_url: str, store: Engine, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """2 workers, then 4 (partitions move to the new ones, each taken from its
    checkpoint), then 2 again: the first two are stopped with SIGTERM, commit
    every partition a last time (fenced) and exit without leaving the group, so
    their partitions move once their sessions lapse (msgtally worker's default:
    Tansu 0.6.0 mishandles a member that leaves). All while the collectors'
    write path produces; the figures stay exact."""
    log = _topic(broker, store)
    requests = history(16, 3000, time.time() - 2000)
    workers += [WorkerProcess(pg_url, log, tmp_path, n) for n in ("a", "b")]
    wait_for("two workers to own partitions", lambda: len(_owning(store)) == 2)
    producer = SteadyProducer(log, PARTS, requests, rate=12).start()
    wait_for("a quarter of the requests", lambda: producer.sent > len(requests) // 4)
    workers += [WorkerProcess(pg_url, log, tmp_path, n) for n in ("c", "d")]
    every = {w.pid for w in workers}
    wait_for("four workers to own partitions", lambda: _owning(store) == every, 90)
    assert producer.sent < len(requests) * 3 // 4  # under load
    for w in workers[:2]:
        assert w.stop() == 0
        assert "stopped; its partitions move after its session" in w.text()
    rest = {w.pid for w in workers[2:]}
    wait_for("the two left to own every partition", lambda: _owned_by(store, rest), 90)
    assert producer.sent < len(requests)  # still under load
    final = time.time() + 10_000
    producer.finish(final)
    _settled(store, log, workers)
    _check(store, requests, final, tmp_path)


@pytest.mark.slow
def test_a_store_the_topic_cannot_rebuild_is_refused(
    broker: Tansu, pg_url: str, store: Engine, tmp_path: Path
) -> None:
    """`msgtally worker` refuses to start on a store whose offsets the topic
    does not hold: exit 1, the partition, its offset and the topic's watermark
    named. Shown for real on the end side: the broker lost its log (a new Tansu:
    in memory, as a restarted one) and the topic was made again, same name and
    partition count, while the store had committed past its end.

    The other side, a checkpoint older than the topic's oldest offset, cannot
    be brought about on Tansu 0.6.0 here: it does not answer DeleteRecords (it
    drops the connection) and applies no retention.ms, in memory as on S3.
    That refusal is held by the decision itself, `unreplayable`, below, on
    watermarks as a broker gives them."""
    log = _topic(broker, store)
    writer = KafkaWriter(log, PARTS).start()
    for request in history(17, 200, time.time() - 2000):
        writer.append(batch_of(request).records, None, time.time())
    writer.close()
    worker = WorkerThread(pg_url, log)
    try:
        _wait_applied(store, log, PARTS)
    finally:
        worker.stop()
    ends = committed(store)
    with Tansu(tmp_path / "lost.log") as lost:  # the same topic, its log gone
        again = KafkaLog(lost.bootstrap, log.topic)
        create_topic(again, PARTS, retention_ms=3_600_000)
        run = subprocess.run(
            [sys.executable, "-m", "msgtally.cli", "worker", "--db", pg_url, "--log", str(again)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1, run.stderr
    part = min(ends)
    assert (f"partition {part}: the store has committed up to offset {ends[part]} but the "
            "topic ends at offset 0 (high watermark)") in run.stderr  # fmt: skip


def test_a_checkpoint_older_than_the_topic_keeps_cannot_be_replayed() -> None:
    refusal = unreplayable(3, checkpoint=120, committed=180, low=500, high=900)
    assert refusal is not None
    assert refusal.startswith("partition 3: its checkpoint is at offset 120 but the topic's "
                              "oldest offset (low watermark) is 500")  # fmt: skip
    assert unreplayable(3, checkpoint=500, committed=900, low=500, high=900) is None
    assert unreplayable(3, checkpoint=0, committed=0, low=0, high=0) is None
    assert unreplayable(3, checkpoint=10, committed=901, low=0, high=900) is not None
