"""The Kafka adapter end to end: a real Kafka-protocol broker (Tansu, started on a
free port for this test session, see tests/kafka_broker.py), confluent-kafka,
a real collector, and faults that really happen in a consumer group: handler
failures re-read after a seek, dead letters produced to a dead-letter topic,
an at-most-once consumer that skips what it failed, a consumer killed with
SIGKILL after processing and before committing (its records re-read by
another member), and a rebalance in the middle. The SLIs must equal what the
test itself observed.

The message id also travels in the record's value, so the test knows which
message a handler got without trusting the adapter's header parsing.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka import Producer as RawProducer
from opentelemetry.trace import SpanKind, StatusCode

from msgtally.ingest.shim.adapters.common import Acks
from msgtally.ingest.shim.adapters.kafka import (
    DEAD_LETTER_OF,
    DELIVERY_COUNT,
    Consumer,
    Publisher,
    Received,
    record_id,
)
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally
from msgtally.server import free_port
from tests.adapter_support import Env, Observed, adapter_env, faulty, figures_of
from tests.kafka_broker import Tansu, started_broker

SESSION_MS = 3000  # how long the broker waits for a consumer that died


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """One broker per test process (each xdist worker starts its own)."""
    yield from started_broker(tmp_path_factory)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    # Group joins and a dead member's session timeout take seconds here.
    with adapter_env(tmp_path, "kafka", deadline=120) as made:
        yield made


@pytest.fixture
def topic(broker: Tansu) -> str:
    """A fresh topic of 3 partitions, with its dead-letter topic."""
    name = f"msgtally-test-{uuid.uuid4().hex[:10]}"
    broker.create_topics(name, f"{name}.dlq")
    return name


@pytest.fixture
def group() -> str:
    """A consumer group of this test only (a killed member lingers in its group)."""
    return f"billing-{uuid.uuid4().hex[:8]}"


def consumer_config(broker: Tansu, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": 500,
        # Only the adapter's commits on revoke and close count in these tests.
        "auto.commit.interval.ms": 600_000,
        **extra,
    }


class Ends:
    """The end offset of each partition of a topic, from the delivery reports.

    (Tansu's ListOffsets answer is off for idempotent producers, so the test
    keeps its own.)"""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}

    def delivered(self, err: KafkaError | None, message: Message) -> None:
        assert err is None, err
        p, o = message.partition(), message.offset()
        assert p is not None and o is not None
        self.next[p] = max(self.next.get(p, 0), o + 1)

    def offsets(self) -> list[int]:
        return [self.next.get(p, -1001) for p in range(3)]


def publish(
    env: Env, broker: Tansu, topic: str, n: int, obs: Observed, ends: Ends, label: str = "m"
) -> list[str]:
    """n records with known ids, spread over the partitions; every delivery confirmed."""
    publisher = Publisher({"bootstrap.servers": broker.bootstrap}, env.tally())
    ids = [f"{label}{i:02d}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    for mid in ids:
        publisher.publish(
            topic, mid.encode(), key=mid.encode(), message_id=mid, on_delivery=ends.delivered
        )
    assert publisher.flush(15) == 0
    for mid in ids:
        obs.produce(mid)
    return ids


def member(
    env: Env, broker: Tansu, topic: str, group: str, acks: Acks = "after", **kw: Any
) -> Consumer:
    handler = faulty(lambda msg: msg.body.decode(), **kw.pop("faults", {}))
    return Consumer(consumer_config(broker), env.tally(), group, [topic], handler, acks=acks, **kw)


def drain(
    consumers: list[Consumer],
    obs: Observed,
    until: Callable[[], bool],
    timeout: float = 40,
) -> None:
    """Read with every consumer in turn, noting (value id, attempt, outcome), until `until()`."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the broker did not deliver in time"
        for c in consumers:
            for r in c.read(timeout=0.1):
                obs.deliver(r.body.decode(), r.attempt, r.outcome)


def committed(broker: Tansu, topic: str, group: str) -> list[int]:
    """The group's committed offset per partition (-1001: none)."""
    probe = RawConsumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        found = probe.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        return [tp.offset for tp in found]
    finally:
        probe.close()


def read_all(broker: Tansu, topic: str, n: int) -> list[Message]:
    """The first n records of a topic, whoever wrote them (no group)."""
    raw = RawConsumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader"})
    raw.assign([TopicPartition(topic, p, 0) for p in range(3)])
    out: list[Message] = []
    deadline = time.monotonic() + 15
    try:
        while len(out) < n and time.monotonic() < deadline:
            out.extend(m for m in raw.consume(n, 0.5) if m.error() is None)
    finally:
        raw.close()
    return out


# -- the tests -------------------------------------------------------------------


def test_retries_seek_back_and_dead_letters_go_to_the_dead_letter_topic(
    env: Env, broker: Tansu, topic: str, group: str
) -> None:
    """12 ids. 2 fail on their first delivery: the consumer seeks back and reads
    them again (attempt 2). 1 fails every time: on attempt 3 (max_attempts) it is
    produced to `<topic>.dlq`. 1 is dead-lettered by its handler at once. Then
    everything is committed: a new member of the group reads nothing."""
    obs, ends = Observed(), Ends()
    ids = publish(env, broker, topic, 12, obs, ends)
    flaky, poison, dead = {ids[1], ids[5]}, ids[3], ids[7]
    faults = {
        "fail": lambda m, n: m == poison or (m in flaky and n == 1),
        "dead": lambda m: m == dead,
    }
    c = member(env, broker, topic, group, max_attempts=3, faults=faults)
    drain([c], obs, lambda: len(obs.deliveries) >= 16)
    c.close()

    assert [(n, o) for m, n, o in obs.deliveries if m == poison] == [
        (1, "error"),
        (2, "error"),
        (3, "dead_letter"),
    ]
    for mid in flaky:
        assert [(n, o) for m, n, o in obs.deliveries if m == mid] == [(1, "error"), (2, "ok")]
    expected = obs.expected()
    assert expected == figures_of(
        produced=12,
        delivered=10,
        lost=2,  # the dead-lettered ones
        retried=3,
        attempts=16,
        dead_lettered=2,
        consume_errors=4,
    )
    assert env.figures(topic, group) == expected
    assert env.discrepancies(topic, "dead_lettered", group) == sorted({poison, dead})

    # The dead letters are in the dead-letter topic, with their id and count.
    letters = {
        m.value().decode(): dict(m.headers() or []) for m in read_all(broker, f"{topic}.dlq", 2)
    }
    assert sorted(letters) == sorted({poison, dead})
    assert letters[poison][MESSAGE_ID_HEADER] == poison.encode()
    assert letters[poison][DEAD_LETTER_OF] == topic.encode()
    assert (letters[poison][DELIVERY_COUNT], letters[dead][DELIVERY_COUNT]) == (b"3", b"1")
    # close() committed everything it processed.
    assert committed(broker, topic, group) == ends.offsets()


def test_commit_before_processing_skips_what_failed(
    env: Env, broker: Tansu, topic: str, group: str
) -> None:
    """acks="before": each offset is committed, then the handler fails on 3 of 10
    ids. Nothing reads them again, not even a new member: 3 lost."""
    obs, ends = Observed(), Ends()
    ids = publish(env, broker, topic, 10, obs, ends)
    crash = set(ids[2:8:2])
    a = member(env, broker, topic, group, acks="before", faults={"fail": lambda m, n: m in crash})
    drain([a], obs, lambda: len(obs.deliveries) >= 10)
    a.consumer.close()  # no commit of its own: the offsets were committed first
    assert committed(broker, topic, group) == ends.offsets()

    expected = obs.expected()
    assert expected == figures_of(produced=10, delivered=7, lost=3, attempts=10, consume_errors=3)
    assert env.figures(topic, group) == expected
    assert env.discrepancies(topic, "lost", group) == sorted(crash)


CRASHING_CONSUMER = """
import sys, time
from msgtally.ingest.shim.adapters.kafka import Consumer
from msgtally.ingest.shim.tally import Tally

bootstrap, topic, group, collector, n = sys.argv[1:6]
tally = Tally(collector_url=collector, system="kafka", tracing=False, flush_interval=0.05)
config = {"bootstrap.servers": bootstrap, "auto.offset.reset": "earliest",
          "session.timeout.ms": int(sys.argv[6]), "heartbeat.interval.ms": 500,
          "auto.commit.interval.ms": 600000}
consumer = Consumer(config, tally, group, [topic], lambda msg: None)
done = 0
while done < int(n):
    for r in consumer.read(max_records=1, timeout=0.2):
        print(r.body.decode(), r.attempt, r.outcome, flush=True)
        done += 1
assert tally.flush(10)
print("flushed", flush=True)
time.sleep(600)  # killed here: processed and reported, never committed
"""


@pytest.mark.slow  # a broker fault (a killed consumer, a rebalance): with the slow tests
def test_a_consumer_killed_before_committing_is_read_again_as_duplicates(
    env: Env, broker: Tansu, topic: str, group: str
) -> None:
    """A consumer process handles 5 of 12 records, reports them (its shim flushed)
    and is killed with SIGKILL before any commit. Another member of the group
    reads its partitions again: the 5 are duplicates; none is a retry."""
    obs, ends = Observed(), Ends()
    publish(env, broker, topic, 12, obs, ends)
    args = [broker.bootstrap, topic, group, env.live.url, "5", str(SESSION_MS)]
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_CONSUMER, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as child:
        assert child.stdout is not None
        reader = threading.Thread(target=lambda: [lines.put(x) for x in child.stdout or ()])
        reader.start()
        try:
            while (line := lines.get(timeout=60).split()) != ["flushed"]:
                mid, attempt, outcome = line
                obs.deliver(mid, int(attempt), outcome)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            reader.join()  # the pipe ends with the process
    assert child.returncode == -signal.SIGKILL
    assert len(obs.deliveries) == 5
    assert committed(broker, topic, group) == [-1001] * 3  # it never committed

    b = member(env, broker, topic, group)
    drain([b], obs, lambda: len(obs.deliveries) >= 17)
    b.close()
    first = {m for m, _, _ in obs.deliveries[:5]}
    assert sorted(m for m, _, _ in obs.deliveries[5:]) == sorted(obs.produced)
    expected = obs.expected()
    assert expected == figures_of(produced=12, delivered=12, duplicated=5, attempts=17)
    assert env.figures(topic, group) == expected
    assert env.discrepancies(topic, "duplicated", group) == sorted(first)


@pytest.mark.slow  # a broker fault (a killed consumer, a rebalance): with the slow tests
def test_a_rebalance_commits_what_was_processed(
    env: Env, broker: Tansu, topic: str, group: str
) -> None:
    """Member a processes 10 records (stored, not committed: auto-commit is off for
    this test). Member b joins: the rebalance revokes a's partitions, and a's
    revoke callback commits what it processed, so b re-reads none of it. 20 more
    records are shared out between a and b: 30 delivered, no duplicate."""
    obs, ends = Observed(), Ends()
    publish(env, broker, topic, 10, obs, ends, label="early")
    a = member(env, broker, topic, group)
    drain([a], obs, lambda: len(obs.deliveries) >= 10)
    assert committed(broker, topic, group) == [-1001] * 3  # processed, stored, not committed

    b = member(env, broker, topic, group)
    deadline = time.monotonic() + 30
    while not (a.consumer.assignment() and b.consumer.assignment()):
        assert time.monotonic() < deadline, "no rebalance"
        for c in (a, b):
            assert c.read(timeout=0.1) == []  # everything was processed and committed
    assert len(a.consumer.assignment()) + len(b.consumer.assignment()) == 3
    assert sum(max(o, 0) for o in committed(broker, topic, group)) == 10

    publish(env, broker, topic, 20, obs, ends, label="late")
    before_b = len(obs.deliveries)
    drain([a, b], obs, lambda: len(obs.deliveries) >= 30)
    late_by_b = len(obs.deliveries) - before_b
    for c in (a, b):
        assert c.read(timeout=0.5) == []
        c.close()
    assert late_by_b == 20

    expected = obs.expected()
    assert expected == figures_of(produced=30, delivered=30, attempts=30)
    assert env.figures(topic, group) == expected
    assert committed(broker, topic, group) == ends.offsets()


def test_trace_context_fallback_ids_and_a_failed_delivery(
    env: Env, broker: Tansu, topic: str, group: str
) -> None:
    """A record published without a message id is reported under `<topic>:
    <partition>:<offset>` from its delivery report, and read back under the same
    id, its consumer span linked to its producer span; a record produced without
    the adapter joins through the same fallback; a delivery report that fails is
    reported error."""
    tally = env.tally()
    publisher = Publisher({"bootstrap.servers": broker.bootstrap}, tally)
    reports: list[Message] = []
    publisher.publish(topic, b"traced", on_delivery=lambda _e, m: reports.append(m))
    assert publisher.flush(15) == 0
    raw = RawProducer({"bootstrap.servers": broker.bootstrap})
    raw.produce(topic, b"raw", on_delivery=lambda _e, m: reports.append(m))
    assert raw.flush(15) == 0
    traced_id, raw_id = (record_id(m) for m in reports)
    tally.produced(raw_id, stream=topic)  # a producer without msgtally reports itself

    # No broker at all: the delivery report fails after message.timeout.ms.
    nowhere = f"127.0.0.1:{broker.port + 1 if broker.port < 65535 else 1}"
    config = {"bootstrap.servers": nowhere, "message.timeout.ms": 500, "log_level": 0}
    unreachable = Publisher(config, tally)
    unreachable.publish(topic, b"x", message_id="k-lost")
    assert unreachable.flush(15) == 0

    obs = Observed()
    c = Consumer(consumer_config(broker), env.tally(), group, [topic], lambda msg: None)
    got: list[Received] = []
    deadline = time.monotonic() + 30
    while len(got) < 2:
        assert time.monotonic() < deadline
        got.extend(c.read(timeout=0.2))
    c.close()
    assert sorted((r.body, r.message_id, r.attempt, r.outcome) for r in got) == sorted(
        [(b"traced", traced_id, 1, "ok"), (b"raw", raw_id, 1, "ok")]
    )
    traced = next(r for r in got if r.body == b"traced")
    assert MESSAGE_ID_HEADER not in traced.headers
    assert traced.headers["traceparent"].startswith("00-")

    sends = {s.attributes["messaging.message.id"]: s for s in env.spans_of(SpanKind.PRODUCER)}
    assert sends["k-lost"].status.status_code == StatusCode.ERROR
    assert sends[traced_id].status.status_code == StatusCode.UNSET
    assert env.check_links() == (1, 1)  # the raw record carried no trace context
    assert (
        env.registry(tally).get_sample_value(
            "msgtally_sdk_produced_total", {"stream": topic, "outcome": "error"}
        )
        == 1
    )
    for r in got:
        obs.produce(r.message_id)
        obs.deliver(r.message_id, r.attempt, r.outcome)
    assert (
        env.figures(topic, group)
        == obs.expected()
        == figures_of(produced=2, delivered=2, attempts=2)
    )


def test_a_tally_without_a_collector_never_blocks_produce(broker: Tansu, topic: str) -> None:
    """The produce path does no I/O but the broker's: with no collector listening,
    200 records are produced and confirmed, and the shim only counts them."""
    with Tally(collector_url="http://127.0.0.1:9", system="kafka", tracing=False) as tally:
        publisher = Publisher({"bootstrap.servers": broker.bootstrap}, tally)
        confirmed: list[bool] = []
        start = time.monotonic()
        for i in range(200):
            publisher.publish(
                topic,
                b"x",
                message_id=f"n{i}",
                on_delivery=lambda e, _m: confirmed.append(e is None),
            )
        assert publisher.flush(15) == 0
        assert time.monotonic() - start < 10
        assert confirmed == [True] * 200
        tally.close(timeout=0.1)


def test_error_classes_on_the_real_broker(
    env: Env, broker: Tansu, topic: str, group: str
) -> None:
    """Failures each in its class, counted exactly in /v1/slis: records whose value
    does not decode in the handler (serialization; dead-lettered, max_attempts 1), and
    a produce to a broker that is not there, its delivery report _MSG_TIMED_OUT
    (timeout)."""
    obs = Observed()
    tally = env.tally()
    publisher = Publisher({"bootstrap.servers": broker.bootstrap}, tally)
    good = [f"good-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    bad = [f"bad-{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    for mid in good:
        publisher.publish(topic, json.dumps({"id": mid}), key=mid, message_id=mid)
    for mid in bad:
        publisher.publish(topic, b"{not json " + mid.encode(), key=mid, message_id=mid)
    assert publisher.flush(15) == 0
    for mid in good + bad:
        obs.produce(mid)

    reports: list[KafkaError | None] = []
    nowhere = Publisher({"bootstrap.servers": f"127.0.0.1:{free_port()}",
                         "message.timeout.ms": 1000}, tally)  # fmt: skip
    nowhere.publish(topic, b"{}", message_id="timed-out",
                    on_delivery=lambda err, _msg: reports.append(err))  # fmt: skip
    assert nowhere.flush(15) == 0
    (report,) = reports
    assert report is not None and report.code() == KafkaError._MSG_TIMED_OUT
    obs.produce("timed-out", acked=False)

    def handle(msg: Received) -> None:
        json.loads(msg.body)  # JSONDecodeError: serialization

    c = Consumer(consumer_config(broker), tally, group, [topic], handle, max_attempts=1)
    seen: list[Received] = []
    deadline = time.monotonic() + 40
    while len(seen) < 5:
        assert time.monotonic() < deadline, "the broker did not deliver in time"
        seen += c.read(timeout=0.1)
    c.close()
    for r in seen:
        obs.deliver(r.message_id, r.attempt, r.outcome)

    assert sorted(r.message_id for r in seen) == sorted(good + bad)
    assert env.errors(topic, group) == {
        "produce": {"timeout": 1},
        "consume": {"serialization": 2},
    }
    assert env.figures(topic, group) == obs.expected() == figures_of(
        produced=5, delivered=3, lost=2, attempts=5, dead_lettered=2
    )
