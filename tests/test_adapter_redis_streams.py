"""The Redis Streams adapter end to end: the real Redis on 127.0.0.1:6379, a real
collector, faults that really happen in a consumer group (entries left pending
by a consumer that dies, XAUTOCLAIM by another, XACK-then-crash, a producer
resend, a dead-letter stream), and SLIs that must equal what the test itself
observed at the handlers and in Redis.

The message id also travels in a `body` field, so the test knows which message
a handler got without trusting the adapter's field parsing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.trace import SpanKind, StatusCode
from redis.backoff import NoBackoff
from redis.retry import Retry

from msgtally.ingest.shim.adapters.common import Acks
from msgtally.ingest.shim.adapters.redis_streams import (
    DEAD_LETTER_ENTRY,
    DEAD_LETTER_OF,
    DELIVERY_COUNT,
    Consumer,
    Publisher,
    Received,
    message_id_of,
)
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally
from tests.adapter_support import GROUP, Env, Observed, adapter_env, faulty, figures_of
from tests.conftest import service_unavailable

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
IDLE_MS = 500  # how long an entry sits pending before another consumer claims it


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with adapter_env(tmp_path, "redis") as made:
        yield made


def client() -> redis.Redis:
    """A service's own connection; closing it with entries pending is the crash."""
    return redis.Redis(REDIS_HOST, REDIS_PORT, socket_timeout=5)


@pytest.fixture
def key() -> Iterator[str]:
    """A unique stream key with its group; deleted (with its dead-letter stream) after."""
    name = f"msgtally:test:{uuid.uuid4().hex[:12]}"
    with client() as r:
        try:
            r.ping()
        except redis.RedisError as exc:
            service_unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT} unreachable: {exc}")
        r.xgroup_create(name, GROUP, id="0", mkstream=True)
        try:
            yield name
        finally:
            r.delete(name, f"{name}:dead-letter")


def note(obs: Observed, handled: list[Received]) -> list[Received]:
    """Record each delivery under the id read from the entry's body field."""
    for h in handled:
        obs.deliver(h.body[b"body"].decode(), h.attempt, h.outcome)
    return handled


def produce(publisher: Publisher, key: str, n: int, obs: Observed) -> list[str]:
    ids = [f"m{i:02d}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    for mid in ids:
        publisher.publish(key, {"body": mid}, message_id=mid)
        obs.produce(mid)
    return ids


def consumer(
    r: redis.Redis, tally: Tally, key: str, name: str, acks: Acks = "after", **kw: Any
) -> Consumer:
    handler = faulty(lambda msg: msg.body[b"body"].decode(), **kw.pop("faults", {}))
    return Consumer(r, tally, key, GROUP, name, handler, acks=acks, **kw)


def pending(key: str) -> int:
    with client() as r:
        return int(r.xpending(key, GROUP)["pending"])


# -- the tests -------------------------------------------------------------------


def test_crashed_consumer_entries_are_claimed_retries_and_duplicates(env: Env, key: str) -> None:
    """12 ids. Consumer a reads 5, fails on 2, processes 3 and dies before any XACK.
    Consumer b reads the rest, then XAUTOCLAIMs a's 5 entries (delivery count 2):
    the 3 processed ones are duplicates, all 5 are retries. One id is XADDed twice
    by its producer (Redis does not de-duplicate): one more duplicate."""
    obs = Observed()
    p_tally, c_tally = env.tally(traced=False), env.tally(traced=False)
    with client() as rp:
        publisher = Publisher(rp, p_tally)
        ids = produce(publisher, key, 12, obs)
        publisher.publish(key, {"body": ids[8]}, message_id=ids[8], attempt=2)  # the resend
        obs.produce(ids[8], attempt=2)
        assert rp.xlen(key) == 13

    failing = {ids[0], ids[1]}
    with client() as ra:  # leaving the block closes the connection: the crash
        a = consumer(
            ra, c_tally, key, "a", acks="manual", faults={"fail": lambda m, n: m in failing}
        )
        first = note(obs, a.read(count=5))
    assert [(h.message_id, h.attempt) for h in first] == [(m, 1) for m in ids[:5]]
    assert [h.outcome for h in first] == ["error", "error", "ok", "ok", "ok"]
    assert pending(key) == 5

    with client() as rb:
        b = consumer(rb, c_tally, key, "b")
        note(obs, b.read(count=100))
        assert b.claim(IDLE_MS) == []  # not idle long enough yet: a might still be alive
        time.sleep(IDLE_MS / 1000 + 0.05)
        claimed = note(obs, b.claim(IDLE_MS))
        assert b.claim(0) == [] and b.read() == []
    assert [(h.message_id, h.attempt, h.outcome) for h in claimed] == [
        (m, 2, "ok") for m in ids[:5]
    ]
    assert pending(key) == 0

    expected = obs.expected()
    assert expected == {
        "produced": 12,
        "delivered": 12,
        "lost": 0,
        "duplicated": 4,  # 3 processed by a, redelivered to b; 1 resent by the producer
        "retried": 6,  # 5 claimed + 1 resent
        "attempts": 18,
        "dead_lettered": 0,
        "consume_errors": 2,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.figures(key) == expected
    assert env.discrepancies(key, "duplicated") == sorted([*ids[2:5], ids[8]])


def test_xack_before_processing_then_crash_loses(env: Env, key: str) -> None:
    """ack="before": XACK, then the handler fails on 3 of 10 ids. Nothing is left
    pending, so no other consumer can claim them: 3 lost."""
    obs = Observed()
    p_tally, c_tally = env.tally(traced=False), env.tally(traced=False)
    with client() as rp:
        ids = produce(Publisher(rp, p_tally), key, 10, obs)
    crash = set(ids[2:8:2])
    with client() as ra:
        a = consumer(ra, c_tally, key, "a", acks="before", faults={"fail": lambda m, n: m in crash})
        note(obs, a.read(count=100))
    assert pending(key) == 0
    with client() as rb:
        b = consumer(rb, c_tally, key, "b")
        assert b.claim(0) == [] and b.read() == []

    expected = obs.expected()
    assert expected == {
        "produced": 10,
        "delivered": 7,
        "lost": 3,
        "duplicated": 0,
        "retried": 0,
        "attempts": 10,
        "dead_lettered": 0,
        "consume_errors": 3,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.figures(key) == expected
    assert env.discrepancies(key, "lost") == sorted(crash)


def test_dead_letter_stream_after_max_deliveries(env: Env, key: str) -> None:
    """max_deliveries=3. 2 poison ids fail on deliveries 1, 2 (claimed) and 3: moved
    to the dead-letter stream. 1 id is dead-lettered by its handler at once. One
    id kills 3 consumers before any report (raw XREADGROUP / XAUTOCLAIM, then the
    connection closes): claimed a 4th time, it is moved without running the
    handler. Each of the 4 is reported dead_letter and sits in the dead-letter
    stream with its message id and delivery count."""
    obs = Observed()
    p_tally, c_tally = env.tally(traced=False), env.tally(traced=False)
    with client() as rp:
        publisher = Publisher(rp, p_tally)
        [crasher] = produce(publisher, key, 1, obs)
    with client() as r1:  # dies after reading
        assert len(r1.xreadgroup(GROUP, "crash-1", {key: ">"}, count=1)[0][1]) == 1
    for name in ("crash-2", "crash-3"):  # each claims it, then dies
        with client() as rn:
            assert len(rn.xautoclaim(key, GROUP, name, 0, count=1)[1]) == 1
    with client() as rp:
        ids = produce(publisher, key, 8, obs)
    poison, dead = set(ids[1:3]), {ids[5]}

    faults = {"fail": lambda m, n: m in poison, "dead": lambda m: m in dead}
    with client() as rw:
        w = consumer(rw, c_tally, key, "w", max_attempts=3, faults=faults)
        rounds = [note(obs, w.read(count=100))]
        for _ in range(3):
            rounds.append(note(obs, w.claim(0)))
        dlq = rw.xrange(f"{key}:dead-letter")
    assert [sorted((h.message_id, h.attempt, h.outcome) for h in r) for r in rounds[1:]] == [
        sorted([(crasher, 4, "dead_letter"), *((m, 2, "error") for m in poison)]),
        sorted((m, 3, "dead_letter") for m in poison),
        [],
    ]
    assert pending(key) == 0
    moved = {
        f[MESSAGE_ID_HEADER.encode()].decode(): (
            f[DEAD_LETTER_OF.encode()].decode(),
            int(f[DELIVERY_COUNT.encode()]),
            f[b"body"].decode(),
        )
        for _, f in dlq
    }
    assert moved == {
        crasher: (key, 4, crasher),
        **{m: (key, 3, m) for m in poison},
        **{m: (key, 1, m) for m in dead},
    }
    assert all(f[DEAD_LETTER_ENTRY.encode()] for _, f in dlq)

    expected = obs.expected()
    assert expected == {
        "produced": 9,
        "delivered": 5,
        "lost": 4,  # dead-lettered ids were never delivered ok
        "duplicated": 0,
        "retried": 3,  # the crasher (4 deliveries) and the 2 poison ids
        "attempts": 13,
        "dead_lettered": 4,
        "consume_errors": 4,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.figures(key) == expected
    assert env.discrepancies(key, "dead_lettered") == sorted({crasher} | poison | dead)
    assert env.discrepancies(key, "lost") == sorted({crasher} | poison | dead)


def test_trace_context_fallback_id_restart_and_failed_add(env: Env, key: str) -> None:
    """Both deliveries of a traced entry link to the producer span through the
    `traceparent` field; an entry XADDed without the adapter is reported under
    its entry id; a consumer restarted under the same name gets its pending
    entries back with recover() (delivery count 2); an XADD Redis refuses is
    reported error and re-raised."""
    p_tally, c_tally = env.tally(), env.tally()
    wrong_type = f"{key}:not-a-stream"
    with client() as rp:
        publisher = Publisher(rp, p_tally)
        traced_entry = publisher.publish(key, {"body": "traced"})
        raw_entry = rp.xadd(key, {"body": "raw"}).decode()  # a producer without msgtally
        rp.set(wrong_type, "x")
        try:
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                publisher.publish(wrong_type, {"body": "x"}, message_id="m-refused")
        finally:
            rp.delete(wrong_type)
        [(_, fields), _] = rp.xrange(key)
    mid = fields[MESSAGE_ID_HEADER.encode()].decode()
    assert len(mid) == 32 and fields[b"traceparent"].startswith(b"00-")
    assert message_id_of(raw_entry, {b"body": b"raw"}) == raw_entry

    with client() as r1:  # fails both, then the service restarts
        c = consumer(r1, c_tally, key, "c", faults={"fail": lambda m, n: n == 1})
        first = c.read()
    with client() as r2:
        c = consumer(r2, c_tally, key, "c")
        assert c.read() == []
        second = c.recover()
        assert c.recover() == []
    assert [(h.entry_id, h.message_id, h.attempt, h.outcome) for h in first + second] == [
        (traced_entry, mid, 1, "error"),
        (raw_entry, raw_entry, 1, "error"),
        (traced_entry, mid, 2, "ok"),
        (raw_entry, raw_entry, 2, "ok"),
    ]
    assert pending(key) == 0

    assert p_tally.flush(10) and c_tally.flush(10)
    spans = env.spans.get_finished_spans()
    [send] = [
        s
        for s in spans
        if s.kind == SpanKind.PRODUCER and s.attributes["messaging.message.id"] == mid
    ]
    procs = [s for s in spans if s.kind == SpanKind.CONSUMER]
    traced = [s for s in procs if s.attributes["messaging.message.id"] == mid]
    assert [s.attributes["msgtally.attempt"] for s in traced] == [1, 2]
    for s in traced:
        assert s.attributes["messaging.system"] == "redis"
        assert s.attributes["messaging.consumer.group.name"] == GROUP
        assert [(ln.context.trace_id, ln.context.span_id) for ln in s.links] == [
            (send.context.trace_id, send.context.span_id)
        ]
    assert fields[b"traceparent"].decode().split("-")[1] == format(send.context.trace_id, "032x")
    assert all(s.links == () for s in procs if s.attributes["messaging.message.id"] == raw_entry)
    [refused] = [s for s in spans if s.attributes["messaging.message.id"] == "m-refused"]
    assert refused.status.status_code == StatusCode.ERROR
    assert env.figures(key) == figures_of(
        produced=1, delivered=1, retried=1, attempts=2, unexpected=1, consume_errors=2
    )
    assert env.discrepancies(key, "unexpected") == [raw_entry]


@pytest.fixture
def acl_user(key: str) -> Iterator[tuple[str, str]]:
    """A user of this test alone (ACL SETUSER: no other client of the shared server is
    touched), allowed on the test's keys; removed after. (name, password)"""
    name, password = f"msgtally-test-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with client() as r:
        r.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~msgtally:test:*",
                          "+@all")  # fmt: skip
        try:
            yield name, password
        finally:
            r.execute_command("ACL", "DELUSER", name)


def test_error_classes_on_the_real_server(
    env: Env, key: str, acl_user: tuple[str, str]
) -> None:
    """Failures Redis really produces, each in its class, counted exactly in
    /v1/slis: a producer whose password the server refuses (AUTH of an ACL user:
    auth), a key the user may not write (NOPERM: auth), an entry whose payload does
    not decode in the handler (serialization)."""
    obs = Observed()
    tally = env.tally(traced=False)
    name, password = acl_user
    # redis-py retries a refused AUTH (a ConnectionError) with backoff: seconds, no news.
    once = Retry(NoBackoff(), 0)
    with client() as rp, redis.Redis(REDIS_HOST, REDIS_PORT, username=name, password=password,
                                      socket_timeout=5) as allowed, redis.Redis(
        REDIS_HOST, REDIS_PORT, username=name, password="rotated", socket_timeout=5, retry=once
    ) as refused:  # fmt: skip
        with pytest.raises(redis.AuthenticationError):
            Publisher(refused, tally).publish(key, {"payload": "{}"}, message_id="refused")
        with pytest.raises(redis.exceptions.NoPermissionError):
            Publisher(allowed, tally, stream=key).publish(
                f"elsewhere:{key}", {"payload": "{}"}, message_id="not-allowed"
            )
        obs.produce("refused", acked=False)
        obs.produce("not-allowed", acked=False)
        publisher = Publisher(allowed, tally)
        good = [f"good-{i}" for i in range(3)]
        bad = [f"bad-{i}" for i in range(2)]
        for mid in good:
            publisher.publish(key, {"body": mid, "payload": json.dumps({"n": mid})},
                              message_id=mid)  # fmt: skip
        for mid in bad:
            publisher.publish(key, {"body": mid, "payload": "{not json"}, message_id=mid)
        for mid in good + bad:
            obs.produce(mid)

        def handle(msg: Received) -> None:
            json.loads(msg.body[b"payload"])  # JSONDecodeError: serialization

        c = Consumer(rp, tally, key, GROUP, "c1", handle, max_attempts=1)
        handled = note(obs, c.read(count=100))
    assert sorted(h.message_id for h in handled) == sorted(good + bad)
    assert env.errors(key) == {"produce": {"auth": 2}, "consume": {"serialization": 2}}
    assert env.figures(key) == obs.expected() == figures_of(
        produced=5, delivered=3, lost=2, attempts=5, dead_lettered=2
    )
