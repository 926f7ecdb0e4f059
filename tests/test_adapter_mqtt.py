"""MQTT adapter end to end: the real Mosquitto on 127.0.0.1:1883, a real collector.

The faults are the broker's own behaviour: a subscriber whose socket dies
with processed-but-unacknowledged QoS 1 messages gets them again with DUP on
session resumption (duplicates, attempt 2); QoS 0 messages published while
a subscriber is disconnected are gone (loss), while a persistent session
keeps QoS 1 ones for it (delivered). The SLIs the collector reports must
equal what the test observed.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry

from msgtally.ingest.adapters.mqtt import (
    ENVELOPE_MAGIC,
    MqttPublisher,
    Received,
    payload_id,
    tallied,
    unwrap,
)
from msgtally.ingest.db import open_engine
from msgtally.ingest.sdk import MESSAGE_ID_HEADER, Tally
from msgtally.reconcile import ReconcileConfig, reconcile
from tests.adapter_support import discrepancy_ids, sli_of
from tests.conftest import LiveCollector, service_unavailable

HOST, PORT = "127.0.0.1", 1883
V2 = mqtt.CallbackAPIVersion.VERSION2
FIGURES = ("produced", "delivered", "lost", "duplicated", "retried", "attempts", "dead_lettered")


@dataclass
class Env:
    tally: Tally
    live: LiveCollector
    engine: Any
    spans: InMemorySpanExporter

    def settle(self, stream: str, group: str) -> dict[str, int]:
        """Flush the shim, reconcile past every deadline, read the collector's SLIs."""
        assert self.tally.flush(15), "shim did not flush"
        reconcile(self.engine, ReconcileConfig(deadline=5, settle=0), now=time.time() + 60)
        sli = sli_of(self.live.url, stream, group)
        return {k: sli[k] for k in (*FIGURES, "unexpected", "recovered")}

    def discrepancies(self, stream: str, group: str, kind: str) -> set[str]:
        return set(discrepancy_ids(self.live.url, stream, group, kind))

    def check_links(self) -> tuple[int, int]:
        """Every consumer span with a link points at its message's producer span.

        Returns (linked, unlinked) consumer span counts."""
        finished = self.spans.get_finished_spans()
        sends = {
            s.attributes["messaging.message.id"]: s for s in finished if s.kind == SpanKind.PRODUCER
        }
        linked = unlinked = 0
        for span in finished:
            if span.kind != SpanKind.CONSUMER:
                continue
            assert span.attributes["messaging.system"] == "mqtt"
            if not span.links:
                unlinked += 1
                continue
            send = sends[span.attributes["messaging.message.id"]]
            (link,) = span.links
            assert link.context.trace_id == send.context.trace_id
            assert link.context.span_id == send.context.span_id
            linked += 1
        return linked, unlinked


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        service_unavailable(f"Mosquitto at {HOST}:{PORT} unreachable: {exc!r}")
    engine = open_engine(f"sqlite:///{tmp_path}/x.db")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with LiveCollector(engine, ReconcileConfig(deadline=5, settle=0)) as live:
        tally = Tally(
            collector_url=live.url,
            system="mqtt",
            registry=CollectorRegistry(),
            tracer_provider=provider,
            flush_interval=0.2,
        )
        try:
            yield Env(tally, live, engine, spans)
        finally:
            tally.close()
    provider.shutdown()
    engine.dispose()


def wait(done: Callable[[], bool], timeout: float = 10, what: str = "broker") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} did not deliver in time"
        time.sleep(0.01)


class Peer:
    """A paho client with events for CONNACK and SUBACK, and a real crash."""

    def __init__(
        self,
        base: str,
        *,
        v5: bool,
        persistent: bool = False,
        manual_ack: bool = False,
        will_topic: str | None = None,
    ) -> None:
        self.client_id = f"{base}-{uuid.uuid4().hex[:8]}"
        self.v5 = v5
        self.persistent = persistent
        self.barrier_topic = f"msgtally-test/barrier/{self.client_id}"
        self.manual_ack = manual_ack
        self.will_topic = will_topic
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self.subacks = 0
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            V2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else not self.persistent,
            manual_ack=self.manual_ack,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        if self.will_topic:
            client.will_set(self.will_topic, b"gone", qos=1)
        return client

    def _on_connect(self, _c: Any, _u: Any, flags: Any, _rc: Any, _p: Any) -> None:
        self.session_present = bool(flags.session_present)
        self.connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _rcs: Any, _p: Any) -> None:
        self.subacks += 1

    def connect(self) -> Peer:
        self.connected.clear()
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300 if self.persistent else 0
            self.client.connect(
                HOST, PORT, keepalive=30, clean_start=not self.persistent, properties=props
            )
        else:
            self.client.connect(HOST, PORT, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return self

    def subscribe(self, *topics: str, qos: int = 1) -> None:
        before = self.subacks
        for topic in topics:
            self.client.subscribe(topic, qos=qos)
        wait(lambda: self.subacks == before + len(topics), what="SUBACK")

    def barrier(self) -> None:
        """Everything this client sent before (PUBACKs included) reached the broker:
        a QoS 1 PUBACK for a later publish on the same connection proves it."""
        info = self.client.publish(self.barrier_topic, b"", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def crash(self) -> None:
        """The process dies: no more network loop, the socket closed, no DISCONNECT."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()
        self.connected.clear()

    def restart(self, on_message: Any) -> None:
        """A new process with the same client id (and session) comes up."""
        self.client = self._new_client()
        self.client.on_message = on_message
        self.connect()

    def close(self) -> None:
        if self.connected.is_set():
            self.client.disconnect()
        self.client.loop_stop()
        if self.persistent:  # drop the broker's session
            end = mqtt.Client(
                V2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
                clean_session=None if self.v5 else True,
            )
            done = threading.Event()
            end.on_connect = lambda *_a: done.set()
            if self.v5:
                end.connect(HOST, PORT, clean_start=True)
            else:
                end.connect(HOST, PORT)
            end.loop_start()
            done.wait(5)
            end.disconnect()
            end.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(base: str, **kwargs: Any) -> Peer:
        made.append(Peer(base, **kwargs))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def figures(
    produced: int, ok: Counter[str], seen: list[tuple[str, int]], dead: int = 0
) -> dict[str, int]:
    top: dict[str, int] = {}
    for mid, attempt in seen:
        top[mid] = max(top.get(mid, 0), attempt)
    return {
        "produced": produced,
        "delivered": len(ok),
        "lost": produced - len(ok),
        "duplicated": sum(n - 1 for n in ok.values()),
        "retried": sum(1 for a in top.values() if a > 1),
        "attempts": len(seen),
        "dead_lettered": dead,
        "unexpected": 0,
        "recovered": 0,
    }


def test_v5_qos1_unacked_at_crash_comes_back_with_dup_as_duplicates(
    env: Env, peers: Callable[..., Peer]
) -> None:
    topic = f"msgtally-test/{uuid.uuid4().hex}/orders"
    sub = peers("billing", v5=True, persistent=True, manual_ack=True).connect()
    sub.subscribe(topic)
    pub = peers("shop", v5=True).connect()

    seen: list[tuple[str, int]] = []
    ok: Counter[str] = Counter()
    packet_ids: list[int] = []
    dups: list[bool] = []
    payloads: list[bytes] = []

    def handle(msg: Received) -> None:
        seen.append((msg.message_id, msg.attempt))
        dups.append(bool(msg.message.dup))
        packet_ids.append(msg.message.mid)
        payloads.append(msg.payload)
        ok[msg.message_id] += 1

    # The first life: processes all 6, acks 2 itself, then dies.
    sub.client.on_message = tallied(env.tally, "billing", handle, ack=False)
    publisher = MqttPublisher(pub.client, env.tally, qos=1)
    sent = [publisher.publish(topic, f"order {i}".encode()) for i in range(6)]
    assert all(p.confirmed for p in sent)
    ids = [p.message_id for p in sent]
    wait(lambda: len(seen) == 6)
    for mid in packet_ids[:2]:
        sub.client.ack(mid, 1)
    sub.barrier()
    sub.crash()

    # The second life resumes the session: the broker resends the 4 unacked
    # ones with DUP set; the adapter acks them this time.
    sub.restart(tallied(env.tally, "billing", handle))
    assert sub.session_present is True
    wait(lambda: len(seen) == 10)
    sub.barrier()
    time.sleep(0.3)
    assert len(seen) == 10
    assert dups == [False] * 6 + [True] * 4
    assert [a for _m, a in seen] == [1] * 6 + [2] * 4
    assert [m for m, _a in seen[6:]] == ids[2:]
    assert payloads[:6] == [f"order {i}".encode() for i in range(6)]  # payload untouched

    expected = figures(6, ok, seen)
    assert expected == {
        "produced": 6,
        "delivered": 6,
        "lost": 0,
        "duplicated": 4,
        "retried": 4,
        "attempts": 10,
        "dead_lettered": 0,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.settle(topic, "billing") == expected
    assert env.discrepancies(topic, "billing", "duplicated") == set(ids[2:])
    assert env.check_links() == (10, 0)  # trace context in v5 user properties


def test_v311_qos0_published_while_disconnected_is_lost_qos1_session_keeps_its_own(
    env: Env, peers: Callable[..., Peer]
) -> None:
    base = f"msgtally-test/{uuid.uuid4().hex}"
    telemetry, commands, will = f"{base}/telemetry", f"{base}/commands", f"{base}/will"
    observer = peers("observer", v5=False).connect()
    gone = threading.Event()
    observer.client.on_message = lambda *_a: gone.set()
    observer.subscribe(will)

    sub = peers("dashboard", v5=False, persistent=True, will_topic=will).connect()
    sub.subscribe(telemetry, commands, qos=1)
    pub = peers("sensor", v5=False).connect()
    publisher = MqttPublisher(pub.client, env.tally)  # v3.1.1: the envelope carries the id

    seen: dict[str, list[tuple[str, int]]] = {telemetry: [], commands: []}
    ok: dict[str, Counter[str]] = {telemetry: Counter(), commands: Counter()}
    bodies: list[bytes] = []

    def handle(msg: Received) -> None:
        seen[msg.topic].append((msg.message_id, msg.attempt))
        ok[msg.topic][msg.message_id] += 1
        bodies.append(msg.payload)
        assert "traceparent" in msg.headers

    sub.client.on_message = tallied(env.tally, "dashboard", handle)

    def send(topic: str, qos: int, n: int, label: str) -> list[str]:
        out = []
        for i in range(n):
            p = publisher.publish(topic, f"{label} {i}".encode(), qos=qos)
            assert p.confirmed  # QoS 0: written to the socket; QoS 1: PUBACK
            out.append(p.message_id)
        return out

    def total() -> int:
        return len(seen[telemetry]) + len(seen[commands])

    before_t = send(telemetry, 0, 3, "before")
    before_c = send(commands, 1, 3, "before")
    wait(lambda: total() == 6)
    sub.barrier()  # paho's automatic PUBACKs reached the broker

    # Really gone: the broker fires the subscriber's will once it has noticed.
    sub.crash()
    assert gone.wait(10), "the broker did not notice the disconnect"
    away_t = send(telemetry, 0, 4, "away")
    away_c = send(commands, 1, 4, "away")

    sub.restart(sub.client.on_message)
    assert sub.session_present is True
    wait(lambda: total() == 10)  # the session's QoS 1 messages, none of the QoS 0
    after_t = send(telemetry, 0, 2, "after")  # the subscription works again
    wait(lambda: total() == 12)
    sub.barrier()
    time.sleep(0.3)
    assert total() == 12
    assert [m for m, _a in seen[telemetry]] == before_t + after_t
    assert [m for m, _a in seen[commands]] == before_c + away_c
    assert all(not b.startswith(ENVELOPE_MAGIC) for b in bodies)  # unwrapped

    expected_t = figures(9, ok[telemetry], seen[telemetry])
    assert expected_t["lost"] == 4 and expected_t["delivered"] == 5
    assert env.settle(telemetry, "dashboard") == expected_t
    assert env.discrepancies(telemetry, "dashboard", "lost") == set(away_t)

    expected_c = figures(7, ok[commands], seen[commands])
    assert expected_c["delivered"] == 7 and expected_c["lost"] == 0
    assert expected_c["retried"] == 0  # queued in the session, sent once: no DUP
    assert env.settle(commands, "dashboard") == expected_c
    assert env.check_links() == (12, 0)  # trace context in the envelope


def test_fallback_ids_and_dead_letter_topic(env: Env, peers: Callable[..., Peer]) -> None:
    base = f"msgtally-test/{uuid.uuid4().hex}"
    topic, dead_topic = f"{base}/jobs", f"{base}/jobs-dead"
    watcher = peers("watcher", v5=True).connect()
    dead: list[tuple[str | None, bytes]] = []

    def on_dead(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        user = dict(getattr(message.properties, "UserProperty", []) or [])
        dead.append((user.get(MESSAGE_ID_HEADER), message.payload))

    watcher.client.on_message = on_dead
    watcher.subscribe(dead_topic)

    sub = peers("worker", v5=True, manual_ack=True).connect()  # a v5 subscriber
    sub.subscribe(topic)
    seen: list[tuple[str, int]] = []
    ok: Counter[str] = Counter()
    poison = b"poison " + uuid.uuid4().hex.encode()

    def handle(msg: Received) -> None:
        seen.append((msg.message_id, msg.attempt))
        if msg.payload == poison:
            msg.dead_letter()
            return
        ok[msg.message_id] += 1

    sub.client.on_message = tallied(env.tally, "worker", handle, dead_letter_topic=dead_topic)

    # 1. A producer without msgtally (plain paho, 3.1.1): it reports the
    #    payload digest the consumer falls back to.
    legacy = peers("legacy", v5=False).connect()
    raw = f"legacy {uuid.uuid4().hex}".encode()
    info = legacy.client.publish(topic, raw, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()
    env.tally.produced(payload_id(raw), stream=topic)
    # 2. The adapter on a 3.1.1 client without the envelope: the digest too.
    v3 = peers("v3", v5=False).connect()
    bare = f"bare {uuid.uuid4().hex}".encode()
    plain = MqttPublisher(v3.client, env.tally, envelope=False).publish(topic, bare)
    assert plain.confirmed and plain.message_id == payload_id(bare)
    # 3. The adapter on a 3.1.1 client with the envelope, read by a v5 subscriber.
    wrapped = MqttPublisher(v3.client, env.tally).publish(topic, b"enveloped")
    # 4. v5 with user properties; the handler dead-letters it.
    v5 = peers("v5", v5=True).connect()
    doomed = MqttPublisher(v5.client, env.tally).publish(topic, poison)
    assert wrapped.confirmed and doomed.confirmed

    wait(lambda: len(seen) == 4 and len(dead) == 1)
    sub.barrier()
    time.sleep(0.3)
    assert [m for m, _a in seen] == [
        payload_id(raw),
        payload_id(bare),
        wrapped.message_id,
        doomed.message_id,
    ]
    # The broker has the dead letter on the dead-letter topic, id and all.
    assert dead == [(doomed.message_id, poison)]
    assert unwrap(poison) == ({}, poison)

    expected = figures(4, ok, seen, dead=1)
    assert expected == {
        "produced": 4,
        "delivered": 3,
        "lost": 1,
        "duplicated": 0,
        "retried": 0,
        "attempts": 4,
        "dead_lettered": 1,
        "unexpected": 0,
        "recovered": 0,
    }
    assert env.settle(topic, "worker") == expected
    assert env.discrepancies(topic, "worker", "lost") == {doomed.message_id}
    # The two digests travelled without trace context; the others linked.
    assert env.check_links() == (2, 2)
