"""The NATS JetStream adapter end to end: the real nats-server on 127.0.0.1:4222, a
real collector, faults that really happen in JetStream (nak, a consumer that
dies before acking, ack-then-crash, term and max_deliver), and SLIs that must
equal what the test itself observed at the handlers and from the broker.

The message id also travels in the payload, so the test knows which message a
handler got without trusting the adapter's header parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from msgtally.ingest.shim.adapters.common import Acks
from msgtally.ingest.shim.adapters.nats import (
    NATS_MSG_ID,
    JetStreamConsumer,
    Publisher,
    Received,
    attempt_of,
    message_id_of,
    tallied,
)
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally
from msgtally.server import free_port
from tests.adapter_support import GROUP, Env, Observed, adapter_env, figures_of
from tests.conftest import service_unavailable

NATS_URL = "nats://127.0.0.1:4222"
ACK_WAIT = 1.0


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with adapter_env(tmp_path, "nats") as made:
        yield made


@pytest.fixture
def names() -> tuple[str, str]:
    """A unique JetStream stream and its subject (the msgtally stream)."""
    token = uuid.uuid4().hex[:12]
    return f"MSGTALLY_{token}", f"msgtally.test.{token}"


async def connect() -> NATS:
    try:
        return await nats.connect(
            NATS_URL, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False
        )
    except Exception as exc:  # unreachable: skip, or fail under MSGTALLY_REQUIRE_SERVICES
        service_unavailable(f"NATS at {NATS_URL} unreachable: {exc}")
        raise


@contextlib.asynccontextmanager
async def consumer() -> AsyncIterator[JetStreamContext]:
    """A consumer service's own connection; closing it without acks is the crash."""
    nc = await connect()
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def settled(js: JetStreamContext, stream: str) -> tuple[int | None, int | None]:
    """(ack pending, pending) of the durable once JetStream applied the last acks."""
    deadline = time.monotonic() + 5
    while True:
        info = await js.consumer_info(stream, GROUP)
        if info.num_ack_pending == 0 or time.monotonic() > deadline:
            return info.num_ack_pending, info.num_pending
        await asyncio.sleep(0.05)


async def with_stream(
    stream: str, subject: str, body: Callable[[NATS, JetStreamContext], Awaitable[None]]
) -> None:
    """Create a memory stream for the test, run `body`, delete the stream."""
    nc = await connect()
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject], storage=StorageType.MEMORY)
        try:
            await body(nc, js)
        finally:
            await js.delete_stream(stream)
    finally:
        await nc.close()


async def add_durable(js: JetStreamContext, stream: str, subject: str, **config: Any) -> None:
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name=GROUP, filter_subject=subject, ack_wait=ACK_WAIT, **config),
    )


def recorder(observed: Observed, consumer: JetStreamConsumer) -> Callable[[Msg], Awaitable[str]]:
    """Hand `msg` to the adapter and note (payload id, broker attempt, outcome)."""

    async def run(msg: Msg) -> str:
        outcome = (await consumer(msg)).outcome
        observed.deliver(msg.data.decode(), msg.metadata.num_delivered, outcome)
        return outcome

    return run


async def publish_all(
    publisher: Publisher, subject: str, n: int, obs: Observed, seqs: dict[str, int] | None = None
) -> list[str]:
    ids = [f"m{i:02d}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    for mid in ids:
        ack = await publisher.publish(subject, mid.encode(), message_id=mid)
        assert not ack.duplicate
        obs.produce(mid)
        if seqs is not None:
            seqs[mid] = ack.seq
    return ids


async def fetch(js: JetStreamContext, stream: str, batch: int, timeout: float = 3.0) -> list[Msg]:
    sub = await js.pull_subscribe_bind(durable=GROUP, stream=stream)
    try:
        return await sub.fetch(batch, timeout=timeout)
    except TimeoutError:  # nats-py raises asyncio's (builtin) or its subclass
        return []
    finally:
        await sub.unsubscribe()


async def drain(
    js: JetStreamContext,
    stream: str,
    run: Callable[[Msg], Awaitable[str]],
    until: Callable[[], bool],
) -> None:
    """Fetch and handle until `until()` holds (redeliveries included), at most 15 s."""
    deadline = time.monotonic() + 15
    sub = await js.pull_subscribe_bind(durable=GROUP, stream=stream)
    try:
        while not until():
            assert time.monotonic() < deadline, "JetStream did not redeliver in time"
            try:
                msgs = await sub.fetch(10, timeout=0.5)
            except TimeoutError:  # nats-py raises asyncio's (builtin) or its subclass
                continue
            for msg in msgs:
                await run(msg)
    finally:
        await sub.unsubscribe()


def handler_of(
    fail: Callable[[str, int], bool] = lambda m, n: False,
    dead: Callable[[str], bool] = lambda m: False,
) -> Callable[[Received], Awaitable[None]]:
    async def handle(msg: Received) -> None:
        mid = msg.body.decode()
        if dead(mid):
            msg.dead_letter()
        elif fail(mid, msg.msg.metadata.num_delivered):
            raise RuntimeError(f"cannot process {mid} yet")

    return handle


def wrap(tally: Tally, acks: Acks = "after", **kw: Any) -> JetStreamConsumer:
    return tallied(tally, GROUP, handler_of(**kw.pop("faults", {})), acks=acks, **kw)


# -- the tests -------------------------------------------------------------------


def test_naks_retry_and_a_crash_before_ack_duplicates(env: Env, names: tuple[str, str]) -> None:
    """12 ids. Consumer A1 processes 3 and dies without acking: JetStream redelivers
    them after ack_wait (3 duplicates). A2 naks 2 on their first delivery (2
    retries). 2 ids are published twice by the producer: Nats-Msg-Id de-dup
    stores them once (PubAck.duplicate), the resend shows as a produce retry."""
    stream, subject = names
    obs = Observed()
    p_tally, c_tally = env.tally(traced=False), env.tally(traced=False)

    async def body(nc: NATS, js: JetStreamContext) -> None:
        publisher = Publisher(js, p_tally)
        ids = await publish_all(publisher, subject, 12, obs)
        for mid in ids[10:]:
            ack = await publisher.publish(subject, mid.encode(), message_id=mid, attempt=2)
            assert ack.duplicate is True
            obs.produce(mid, attempt=2)
        assert (await js.stream_info(stream)).state.messages == 12
        await add_durable(js, stream, subject)

        # A1: processes 3 ids (reported ok) and crashes before acking.
        async with consumer() as a1:  # leaving the block closes the connection: the crash
            msgs = await fetch(a1, stream, 3)
            assert [m.data.decode() for m in msgs] == ids[:3]
            run = recorder(obs, wrap(c_tally, acks="manual"))
            for msg in msgs:
                assert await run(msg) == "ok"

        # A2: 6 ids, the first delivery of 2 of them fails -> nak.
        fail = {ids[3], ids[4]}
        async with consumer() as a2:
            run = recorder(obs, wrap(c_tally, faults={"fail": lambda m, n: m in fail and n == 1}))
            msgs = await fetch(a2, stream, 6)
            assert [m.data.decode() for m in msgs] == ids[3:9]
            for msg in msgs:
                await run(msg)

        # B: the rest, the naks' redeliveries and, after ack_wait, A1's.
        async with consumer() as b:
            run = recorder(obs, wrap(c_tally))
            done = lambda: {m for m, _, o in obs.deliveries if o == "ok"} == set(ids)  # noqa: E731
            await drain(b, stream, run, lambda: done() and len(obs.deliveries) >= 17)
            assert await settled(b, stream) == (0, 0)

    asyncio.run(with_stream(stream, subject, body))

    redelivered = sorted(m for m, n, _ in obs.deliveries if n > 1)
    assert len(redelivered) == 5  # 3 after the crash, 2 after the nak
    expected = obs.expected()
    assert expected == {
        "produced": 12,
        "delivered": 12,
        "lost": 0,
        "duplicated": 3,
        "retried": 7,  # 5 redelivered + 2 resent by the producer
        "attempts": 17,
        "dead_lettered": 0,
        "consume_errors": 2,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.figures(subject) == expected
    dup_ids = sorted(m for m, n, _ in obs.deliveries if n > 1 and (m, 1, "ok") in obs.deliveries)
    assert env.discrepancies(subject, "duplicated") == dup_ids


def test_ack_before_processing_then_crash_loses(env: Env, names: tuple[str, str]) -> None:
    """ack="before": the consumer acks, then fails on 3 of 10 ids. JetStream never
    redelivers them (checked past ack_wait with a fresh consumer): 3 lost."""
    stream, subject = names
    obs = Observed()
    p_tally, c_tally = env.tally(traced=False), env.tally(traced=False)
    crash: set[str] = set()

    async def body(nc: NATS, js: JetStreamContext) -> None:
        ids = await publish_all(Publisher(js, p_tally), subject, 10, obs)
        crash.update(ids[2:8:2])
        await add_durable(js, stream, subject)
        async with consumer() as a:
            run = recorder(
                obs, wrap(c_tally, acks="before", faults={"fail": lambda m, n: m in crash})
            )
            for msg in await fetch(a, stream, 10):
                await run(msg)
        await asyncio.sleep(ACK_WAIT + 0.3)
        async with consumer() as b:
            assert await fetch(b, stream, 10, timeout=0.5) == []
            assert await settled(b, stream) == (0, 0)
            assert (await b.consumer_info(stream, GROUP)).num_redelivered == 0

    asyncio.run(with_stream(stream, subject, body))

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
    assert env.figures(subject) == expected
    assert env.discrepancies(subject, "lost") == sorted(crash)


def test_term_and_max_deliver_dead_letter(env: Env, names: tuple[str, str]) -> None:
    """max_deliver=3. 2 poison ids fail every time: nak, nak, then term on the third
    delivery -> dead_letter. 1 id is dead-lettered by its handler at once (term).
    JetStream publishes a MSG_TERMINATED advisory for each of the 3. One more id
    crashes its consumer 3 times before anything is reported: JetStream gives up
    (MAX_DELIVERIES advisory) and the SLIs count it lost, not dead-lettered."""
    stream, subject = names
    obs = Observed()
    p_tally, c_tally = env.tally(traced=False), env.tally(traced=False)
    poison: set[str] = set()
    dead: set[str] = set()
    terminated: list[int] = []
    exhausted: list[int] = []
    seqs: dict[str, int] = {}  # id -> JetStream stream sequence

    async def body(nc: NATS, js: JetStreamContext) -> None:
        async def on_term(msg: Msg) -> None:
            terminated.append(json.loads(msg.data)["stream_seq"])

        async def on_max(msg: Msg) -> None:
            exhausted.append(json.loads(msg.data)["stream_seq"])

        adv = "$JS.EVENT.ADVISORY.CONSUMER"
        await nc.subscribe(f"{adv}.MSG_TERMINATED.{stream}.{GROUP}", cb=on_term)
        await nc.subscribe(f"{adv}.MAX_DELIVERIES.{stream}.{GROUP}", cb=on_max)
        await add_durable(js, stream, subject, max_deliver=3)
        publisher = Publisher(js, p_tally)

        crasher = f"crasher-{uuid.uuid4().hex[:8]}"
        ack = await publisher.publish(subject, crasher.encode(), message_id=crasher)
        obs.produce(crasher)
        seqs[crasher] = ack.seq
        for n in range(1, 4):  # fetched, then the consumer dies before reporting
            async with consumer() as c:
                [msg] = await fetch(c, stream, 1, timeout=ACK_WAIT * 3)
                assert (msg.data.decode(), msg.metadata.num_delivered) == (crasher, n)
        await asyncio.sleep(ACK_WAIT + 0.3)

        ids = await publish_all(publisher, subject, 8, obs, seqs)
        poison.update(ids[1:3])
        dead.add(ids[5])
        faults = {"fail": lambda m, n: m in poison, "dead": lambda m: m in dead}
        run = recorder(obs, wrap(c_tally, max_attempts=3, faults=faults))
        async with consumer() as c:
            await drain(c, stream, run, lambda: len(obs.deliveries) >= 5 + 1 + 2 * 3)
            assert await fetch(c, stream, 10, timeout=0.5) == []
            assert await settled(c, stream) == (0, 0)
        await nc.flush()
        deadline = time.monotonic() + 3
        while (len(terminated) < 3 or not exhausted) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    asyncio.run(with_stream(stream, subject, body))

    for mid in poison:
        assert [(n, o) for m, n, o in obs.deliveries if m == mid] == [
            (1, "error"),
            (2, "error"),
            (3, "dead_letter"),
        ]
    assert sorted(terminated) == sorted(seqs[m] for m in poison | dead)
    assert exhausted == [seqs[obs.produced[0]]]
    expected = obs.expected()
    assert expected == {
        "produced": 9,
        "delivered": 5,
        "lost": 4,  # the 3 dead-lettered and the crasher
        "duplicated": 0,
        "retried": 2,
        "attempts": 12,
        "dead_lettered": 3,
        "consume_errors": 4,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.figures(subject) == expected
    assert env.discrepancies(subject, "dead_lettered") == sorted(poison | dead)
    crasher_id = obs.produced[0]
    assert env.discrepancies(subject, "lost") == sorted(poison | dead | {crasher_id})


def test_trace_context_fallback_id_and_failed_publish(env: Env, names: tuple[str, str]) -> None:
    """The consumer span links to the producer span through the headers; a message
    published without the adapter is reported under `<stream>:<sequence>`; a
    publish JetStream does not confirm is reported error and re-raised; the
    Tally calls run inside the asyncio service without blocking it."""
    stream, subject = names
    p_tally, c_tally = env.tally(), env.tally()
    seen: dict[str, Any] = {}

    async def body(nc: NATS, js: JetStreamContext) -> None:
        publisher = Publisher(js, p_tally)
        ack = await publisher.publish(subject, b"traced", headers={"x-app": "1"})
        raw = await js.publish(subject, b"raw")  # a producer without msgtally
        seen["raw_id"] = f"{raw.stream}:{raw.seq}"
        with pytest.raises(NoStreamResponseError):
            await publisher.publish(f"nowhere.{uuid.uuid4().hex}", b"x", message_id="m-lost")

        await add_durable(js, stream, subject)
        async with consumer() as c:
            msgs = await fetch(c, stream, 2)
            assert msgs[0].headers is not None
            seen["headers"] = dict(msgs[0].headers)
            seen["ids"] = [message_id_of(m) for m in msgs]
            seen["attempts"] = [attempt_of(m) for m in msgs]
            wrapped = tallied(c_tally, GROUP, handler_of())
            seen["outcomes"] = [r.outcome for r in await asyncio.gather(*map(wrapped, msgs))]
            assert [m.metadata.sequence.stream for m in msgs] == [ack.seq, raw.seq]
            assert await settled(c, stream) == (0, 0)

    asyncio.run(with_stream(stream, subject, body))

    headers = seen["headers"]
    mid = headers[MESSAGE_ID_HEADER]
    assert len(mid) == 32 and headers[NATS_MSG_ID] == mid and headers["x-app"] == "1"
    assert headers["traceparent"].startswith("00-")
    assert seen["ids"] == [mid, seen["raw_id"]]
    assert seen["attempts"] == [1, 1]
    assert seen["outcomes"] == ["ok", "ok"]

    assert p_tally.flush(10) and c_tally.flush(10)
    sends = {s.attributes["messaging.message.id"]: s for s in env.spans_of(SpanKind.PRODUCER)}
    procs = {s.attributes["messaging.message.id"]: s for s in env.spans_of(SpanKind.CONSUMER)}
    send, proc = sends[mid], procs[mid]
    assert proc.attributes["messaging.system"] == "nats"
    assert proc.attributes["messaging.consumer.group.name"] == GROUP
    assert [link.context.span_id for link in proc.links] == [send.context.span_id]
    assert [link.context.trace_id for link in proc.links] == [send.context.trace_id]
    assert headers["traceparent"].split("-")[1] == format(send.context.trace_id, "032x")
    assert procs[seen["raw_id"]].links == ()
    assert sends["m-lost"].status.status_code == StatusCode.ERROR
    assert env.figures(subject) == figures_of(produced=1, delivered=1, unexpected=1, attempts=1)
    assert env.discrepancies(subject, "unexpected") == [seen["raw_id"]]


def test_never_blocks_the_event_loop_with_the_collector_down(names: tuple[str, str]) -> None:
    """The shim part does no I/O on the event loop: with no collector listening,
    publishing and handling 50 messages keeps the loop responsive (a ticker task
    measures its lag) and every message is handled and acked."""
    stream, subject = names
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    tally = Tally(collector_url=dead_url, system="nats", registry=CollectorRegistry())
    lags: list[float] = []
    outcomes: list[str] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - t - 0.005)

    async def body(nc: NATS, js: JetStreamContext) -> None:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        publisher = Publisher(js, tally)
        await asyncio.gather(*(publisher.publish(subject, b"x") for _ in range(50)))
        await add_durable(js, stream, subject)
        wrapped = tallied(tally, GROUP, handler_of())
        async with consumer() as c:
            msgs = await fetch(c, stream, 50)
            outcomes.extend(r.outcome for r in await asyncio.gather(*map(wrapped, msgs)))
            assert await settled(c, stream) == (0, 0)
        stop.set()
        await tick

    asyncio.run(with_stream(stream, subject, body))
    tally.close(timeout=0.1)
    assert outcomes == ["ok"] * 50
    assert lags and max(lags) < 0.1, max(lags)


@pytest.fixture
def guarded() -> Iterator[str]:
    """A second nats-server, started for this test on a free port with a user and a
    password (the shared one takes anyone and is not to be restarted); its host:port."""
    binary = shutil.which("nats-server")
    if binary is None:
        service_unavailable("nats-server is not installed: no server with auth to start")
    assert binary is not None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "--user", "svc", "--pass", "current"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no nats-server"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_error_classes_on_the_real_server(
    env: Env, names: tuple[str, str], guarded: str
) -> None:
    """Failures NATS really produces, each in its class, counted exactly in /v1/slis:
    a publish no stream takes (JetStream has no responder: unavailable), a handler
    forwarding to a server that refuses its password (nats-py's plain `Error`
    'Authorization Violation': auth), a payload that does not decode (serialization).
    max_attempts 1: each failure is terminated (dead_letter) with its class."""
    stream, subject = names
    obs = Observed()
    tally = env.tally()
    seen: list[Received] = []

    async def forward() -> None:
        nc = NATS()  # closed even when the connect is refused: no socket left open
        try:
            await nc.connect(f"nats://svc:rotated@{guarded}", connect_timeout=2,
                             allow_reconnect=False, max_reconnect_attempts=0)  # fmt: skip
        finally:
            await nc.close()

    async def handle(msg: Received) -> None:
        if "forward" in json.loads(msg.body):  # JSONDecodeError: serialization
            await forward()  # refused: auth

    async def body(nc: NATS, js: JetStreamContext) -> None:
        publisher = Publisher(js, tally)
        good = [json.dumps({"n": i}).encode() for i in range(3)]
        sends = [*good, b"{not json 1", b"{not json 2", b'{"forward": 1}', b'{"forward": 2}']
        for i, data in enumerate(sends):
            await publisher.publish(subject, data, message_id=f"m{i}")
            obs.produce(f"m{i}")
        with pytest.raises(NoStreamResponseError):
            await Publisher(js, tally, stream=subject).publish(
                f"nowhere.{uuid.uuid4().hex}", b"{}", message_id="no-stream"
            )
        obs.produce("no-stream", acked=False)

        await add_durable(js, stream, subject)
        wrapped = tallied(tally, GROUP, handle, max_attempts=1)

        async def run(msg: Msg) -> str:
            received = await wrapped(msg)
            seen.append(received)
            obs.deliver(received.message_id, received.attempt, received.outcome)
            return received.outcome

        await drain(js, stream, run, lambda: len(seen) >= len(sends))

    asyncio.run(with_stream(stream, subject, body))
    assert sorted(r.outcome for r in seen) == ["dead_letter"] * 4 + ["ok"] * 3
    assert env.errors(subject) == {
        "produce": {"unavailable": 1},
        "consume": {"serialization": 2, "auth": 2},
    }
    assert env.figures(subject) == obs.expected() == figures_of(
        produced=7, delivered=3, lost=4, attempts=7, dead_lettered=4
    )
