"""The engine's self-monitoring on workers (msgtally worker over the Kafka log):
a worker stopped (SIGSTOP) while a collector keeps producing, read through
that collector's /metrics and by a real Prometheus evaluating the
self-monitoring rules on it. Real processes: `msgtally serve --log`, `msgtally
worker`, Tansu, PostgreSQL, Prometheus."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from msgtally.alerts import selfmon
from msgtally.alerts.render import render_rules
from msgtally.alerts.rules import generate
from msgtally.ingest.shim.wire import record_to_json
from msgtally.names import BACKLOG, LAST_PASS, RECONCILE_RECORDS
from msgtally.oracle import Record
from msgtally.slis.spec.load import load_spec
from msgtally.store.db import open_store
from msgtally.store.engine_facts import engine_facts
from msgtally.store.kafka_log import KafkaLog, open_log
from tests.kafka_broker import Tansu, started_broker
from tests.partitioned_procs import CollectorProcess, WorkerProcess, owners, wait_for
from tests.partitioned_support import committed, high_watermarks, history, new_topic
from tests.promserver import Prometheus
from tests.test_selfmon import SPEC, _alerts, _wait

PARTS = 4


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    yield from started_broker(tmp_path_factory)


def _post(collector: CollectorProcess, requests: Sequence[Sequence[Record]]) -> int:
    """The requests through the collector, each answered 200; the records sent."""
    with httpx.Client(base_url=collector.url, timeout=30) as client:
        for request in requests:
            body = {"records": [record_to_json(r) for r in request]}
            answer = client.post("/v1/records", json=body)
            assert answer.status_code == 200, answer.text
    return sum(len(r) for r in requests)


def _series(collector: CollectorProcess) -> dict[str, float]:
    """The engine's series of the collector's /metrics."""
    text = httpx.get(f"{collector.url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith((BACKLOG, LAST_PASS, RECONCILE_RECORDS)):
            out[name] = float(value)
    return out


def _exact(collector: CollectorProcess, store: Engine, log: KafkaLog) -> dict[str, float]:
    """The collector's series at a moment the topic's end did not move (heartbeats
    arrive every second): its backlog is then the messages past the committed
    offsets, exactly."""
    for _ in range(100):
        ends = high_watermarks(log, PARTS)
        got = _series(collector)
        offsets = committed(store)
        if high_watermarks(log, PARTS) == ends:
            want = sum(max(0, ends[p] - offsets[p]) for p in range(PARTS))
            if got[BACKLOG] == want:
                return got
        time.sleep(0.2)
    raise AssertionError(f"backlog {got[BACKLOG]} never the topic's {want} past the commits")


def _caught_up(store: Engine, log: KafkaLog) -> bool:
    ends, offsets = high_watermarks(log, PARTS), committed(store)
    return all(offsets[p] >= ends[p] for p in range(PARTS))


def _records(series: dict[str, float]) -> int:
    new = series[f'{RECONCILE_RECORDS}_total{{result="new"}}']
    return int(new + series[f'{RECONCILE_RECORDS}_total{{result="repeat"}}'])


@pytest.mark.slow
def test_a_stopped_worker_ages_the_last_pass_grows_the_backlog_and_pages(
    broker: Tansu, pg_url: str, tmp_path: Path
) -> None:
    """The worker runs: its partitions' last commits are seconds old, the backlog
    what the topic holds past them, the records applied every record sent.
    Stopped, while the collector goes on producing (requests, heartbeats): the
    last pass stays at its last commit, the backlog grows with every message,
    exactly, and a real Prometheus has the stall alert pending once the last pass
    is 3 minutes old. Resumed, it catches up and the alert is gone."""
    store = open_store(pg_url)
    log = new_topic(broker, PARTS)
    assert open_log(store, str(log))[1] == PARTS
    collector = CollectorProcess(pg_url, log, tmp_path, "c")
    worker = WorkerProcess(pg_url, log, tmp_path, "w")
    spec = load_spec(SPEC)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(generate(spec), spec.service))
    requests = history(31, 1000, time.time() - 2000)  # 113 requests
    try:
        wait_for("the worker to own every partition",
                 lambda: {pid for pid, _e in owners(store).values()} == {worker.pid})  # fmt: skip
        target = collector.url.removeprefix("http://")
        with Prometheus(tmp_path, target, rules) as prom:
            sent = _post(collector, requests[:40])
            wait_for("the worker to catch up", lambda: _caught_up(store, log))
            running = _exact(collector, store, log)
            assert _records(running) == sent
            assert time.time() - running[LAST_PASS] < 30
            assert not _alerts(prom, selfmon.STALLED)

            worker.signal(signal.SIGSTOP)
            time.sleep(1)  # a commit under way when stopped stays open, not visible
            with store.connect() as conn:
                stopped = engine_facts(conn)
            assert stopped.last_pass is not None and stopped.applied == sent
            before = _exact(collector, store, log)[BACKLOG]
            _post(collector, requests[40:70])
            first = _exact(collector, store, log)
            time.sleep(2)  # heartbeats: two more a partition at least
            _post(collector, requests[70:])
            second = _exact(collector, store, log)
            # Each request is a message on every partition its ids hash to (one at least).
            assert first[BACKLOG] >= before + 30 and second[BACKLOG] >= first[BACKLOG] + 30 + 2
            assert first[LAST_PASS] == second[LAST_PASS] == stopped.last_pass
            assert _records(first) == _records(second) == sent

            (stalled,) = _wait(prom, selfmon.STALLED, timeout=selfmon.STALL_AFTER + 90)
            assert stalled["state"] == "pending"  # for 2m: pending, then it pages
            assert time.time() - stopped.last_pass > selfmon.STALL_AFTER

            worker.signal(signal.SIGCONT)
            wait_for("the worker to catch up again", lambda: _caught_up(store, log), 120)
            wait_for("the stall alert to go", lambda: not _alerts(prom, selfmon.STALLED), 60)
        resumed = _exact(collector, store, log)
        assert _records(resumed) == sum(len(r) for r in requests)
        assert resumed[LAST_PASS] > stopped.last_pass
    finally:
        worker.signal(signal.SIGCONT)
        worker.kill()
        collector.kill()
        store.dispose()
