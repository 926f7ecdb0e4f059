"""MQTT adapter end to end: the real Mosquitto on 127.0.0.1:1883, a real collector.

The faults are the broker's own behaviour: a subscriber whose socket dies
with processed-but-unacknowledged QoS 1 messages gets them again with DUP on
session resumption (duplicates, attempt 2); QoS 0 messages published while
a subscriber is disconnected are gone (loss), while a persistent session
keeps QoS 1 ones for it (delivered). The SLIs the collector reports must
equal what the test observed.
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from msgtally.ingest.shim.adapters.common import body_digest
from msgtally.ingest.shim.adapters.mqtt import ENVELOPE_MAGIC, Publisher, Received, tallied, unwrap
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER
from msgtally.server import free_port
from tests.adapter_support import GROUP, Env, Observed, adapter_env, figures_of
from tests.conftest import service_unavailable

HOST, PORT = "127.0.0.1", 1883
V2 = mqtt.CallbackAPIVersion.VERSION2


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        service_unavailable(f"Mosquitto at {HOST}:{PORT} unreachable: {exc!r}")
    with adapter_env(tmp_path, "mqtt") as made:
        yield made


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


def test_v5_qos1_unacked_at_crash_comes_back_with_dup_as_duplicates(
    env: Env, peers: Callable[..., Peer]
) -> None:
    topic = f"msgtally-test/{uuid.uuid4().hex}/orders"
    sub = peers("billing", v5=True, persistent=True, manual_ack=True).connect()
    sub.subscribe(topic)
    pub = peers("shop", v5=True).connect()
    tally, obs = env.tally(), Observed()
    packet_ids: list[int] = []
    dups: list[bool] = []
    bodies: list[bytes] = []

    def handle(msg: Received) -> None:
        obs.deliver(msg.message_id, msg.attempt)
        dups.append(bool(msg.message.dup))
        packet_ids.append(msg.message.mid)
        bodies.append(msg.body)

    # The first life: processes all 6, acks 2 itself, then dies.
    sub.client.on_message = tallied(tally, "billing", handle, acks="manual")
    publisher = Publisher(pub.client, tally, qos=1)
    sent = [publisher.publish(topic, f"order {i}".encode()) for i in range(6)]
    assert all(p.confirmed for p in sent)
    ids = [p.message_id for p in sent]
    for mid in ids:
        obs.produce(mid)
    wait(lambda: len(obs.deliveries) == 6)
    for mid in packet_ids[:2]:
        sub.client.ack(mid, 1)
    sub.barrier()
    sub.crash()

    # The second life resumes the session: the broker resends the 4 unacked
    # ones with DUP set; the adapter acks them this time.
    sub.restart(tallied(tally, "billing", handle))
    assert sub.session_present is True
    wait(lambda: len(obs.deliveries) == 10)
    sub.barrier()
    time.sleep(0.3)
    assert len(obs.deliveries) == 10
    assert dups == [False] * 6 + [True] * 4
    assert [a for _m, a, _ in obs.deliveries] == [1] * 6 + [2] * 4
    assert [m for m, _a, _ in obs.deliveries[6:]] == ids[2:]
    assert bodies[:6] == [f"order {i}".encode() for i in range(6)]  # payload untouched

    expected = obs.expected()
    assert expected == figures_of(produced=6, delivered=6, duplicated=4, retried=4, attempts=10)
    assert env.figures(topic) == expected
    assert env.discrepancies(topic, "duplicated") == sorted(ids[2:])
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
    tally = env.tally()
    publisher = Publisher(pub.client, tally)  # v3.1.1: the envelope carries the id
    obs = {telemetry: Observed(), commands: Observed()}
    bodies: list[bytes] = []

    def handle(msg: Received) -> None:
        obs[msg.topic].deliver(msg.message_id, msg.attempt)
        bodies.append(msg.body)
        assert "traceparent" in msg.headers

    sub.client.on_message = tallied(tally, "billing", handle)

    def send(topic: str, qos: int, n: int, label: str) -> list[str]:
        out = []
        for i in range(n):
            p = publisher.publish(topic, f"{label} {i}".encode(), qos=qos)
            assert p.confirmed  # QoS 0: written to the socket; QoS 1: PUBACK
            obs[topic].produce(p.message_id)
            out.append(p.message_id)
        return out

    def total() -> int:
        return len(obs[telemetry].deliveries) + len(obs[commands].deliveries)

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
    assert [m for m, _, _ in obs[telemetry].deliveries] == before_t + after_t
    assert [m for m, _, _ in obs[commands].deliveries] == before_c + away_c
    assert all(not b.startswith(ENVELOPE_MAGIC) for b in bodies)  # unwrapped

    expected_t = obs[telemetry].expected()
    assert expected_t == figures_of(produced=9, delivered=5, lost=4, attempts=5)
    assert env.figures(telemetry) == expected_t
    assert env.discrepancies(telemetry, "lost") == sorted(away_t)

    # Queued in the session, sent once: no DUP, no retry.
    expected_c = obs[commands].expected()
    assert expected_c == figures_of(produced=7, delivered=7, attempts=7)
    assert env.figures(commands) == expected_c
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
    tally, obs = env.tally(), Observed()
    poison = b"poison " + uuid.uuid4().hex.encode()

    def handle(msg: Received) -> None:
        if msg.body == poison:
            obs.deliver(msg.message_id, msg.attempt, "dead_letter")
            msg.dead_letter()
            return
        obs.deliver(msg.message_id, msg.attempt)

    sub.client.on_message = tallied(tally, "billing", handle, dead_letter_topic=dead_topic)

    # 1. A producer without msgtally (plain paho, 3.1.1): it reports the
    #    payload digest the consumer falls back to.
    legacy = peers("legacy", v5=False).connect()
    raw = f"legacy {uuid.uuid4().hex}".encode()
    info = legacy.client.publish(topic, raw, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()
    tally.produced(body_digest(raw), stream=topic)
    # 2. The adapter on a 3.1.1 client without the envelope: the digest too.
    v3 = peers("v3", v5=False).connect()
    bare = f"bare {uuid.uuid4().hex}".encode()
    plain = Publisher(v3.client, tally, envelope=False).publish(topic, bare)
    assert plain.confirmed and plain.message_id == body_digest(bare)
    # 3. The adapter on a 3.1.1 client with the envelope, read by a v5 subscriber.
    wrapped = Publisher(v3.client, tally).publish(topic, b"enveloped")
    # 4. v5 with user properties; the handler dead-letters it.
    v5 = peers("v5", v5=True).connect()
    doomed = Publisher(v5.client, tally).publish(topic, poison)
    assert wrapped.confirmed and doomed.confirmed
    ids = [body_digest(raw), body_digest(bare), wrapped.message_id, doomed.message_id]
    for mid in ids:
        obs.produce(mid)

    wait(lambda: len(obs.deliveries) == 4 and len(dead) == 1)
    sub.barrier()
    time.sleep(0.3)
    assert [m for m, _, _ in obs.deliveries] == ids
    # The broker has the dead letter on the dead-letter topic, id and all.
    assert dead == [(doomed.message_id, poison)]
    assert unwrap(poison) == ({}, poison)

    expected = obs.expected()
    assert expected == figures_of(produced=4, delivered=3, lost=1, attempts=4, dead_lettered=1)
    assert env.figures(topic) == expected
    assert env.discrepancies(topic, "lost") == [doomed.message_id]
    # The two digests travelled without trace context; the others linked.
    assert env.check_links() == (2, 2)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[int]:
    """A second Mosquitto, started for this test on a free port with a password file
    and an ACL (the shared one takes anyone and is not to be restarted): user `svc`,
    password `current`, may publish and subscribe under `msgtally-test/` only. Its port."""
    binary, passwd = shutil.which("mosquitto") or "", shutil.which("mosquitto_passwd") or ""
    if not (binary and passwd):
        service_unavailable("mosquitto is not installed: no broker with auth to start")
    port = free_port()
    subprocess.run([passwd, "-b", "-c", str(tmp_path / "pw"), "svc", "current"], check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    (tmp_path / "acl").write_text("user svc\ntopic readwrite msgtally-test/#\n")
    conf = tmp_path / "mosquitto.conf"
    # `user`: started as root, mosquitto would switch to its own user, who cannot
    # read the test's private directory; as anyone else it stays who it is.
    conf.write_text(f"listener {port} {HOST}\nallow_anonymous false\npersistence false\n"
                    f"user {getpass.getuser()}\npassword_file {tmp_path / 'pw'}\n"
                    f"acl_file {tmp_path / 'acl'}\nlog_dest file {tmp_path / 'log'}\n")  # fmt: skip
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                log = tmp_path / "log"
                assert proc.poll() is None and time.monotonic() < deadline, (
                    log.read_text() if log.exists() else "no mosquitto"
                )
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_error_classes_on_a_broker_with_auth(env: Env, guarded: int) -> None:
    """Failures Mosquitto really produces, each in its class, counted exactly in
    /v1/slis: a publish its ACL refuses (MQTT v5 PUBACK 0x87 not authorized: auth), a
    publisher whose password it refuses (CONNACK not authorized, then no connection:
    unavailable), payloads that do not decode in the handler (serialization)."""
    topic = f"msgtally-test/classes/{uuid.uuid4().hex[:8]}"
    tally = env.tally()
    obs = Observed()
    clients: list[mqtt.Client] = []

    def client(password: str) -> tuple[mqtt.Client, threading.Event]:
        made = mqtt.Client(V2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        made.username_pw_set("svc", password)
        answered = threading.Event()
        made.on_connect = lambda *_args: answered.set()
        made.connect(HOST, guarded, keepalive=30)
        made.loop_start()
        clients.append(made)
        assert answered.wait(10), "no CONNACK"
        return made, answered

    handled: list[Received] = []

    def handle(msg: Received) -> None:
        handled.append(msg)
        json.loads(msg.body)  # JSONDecodeError: serialization

    try:
        sub, _ = client("current")
        sub.on_message = tallied(tally, GROUP, handle, max_attempts=1)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *_args: subscribed.set()
        sub.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"

        pub, _ = client("current")
        publisher = Publisher(pub, tally)
        sends = [json.dumps({"n": i}).encode() for i in range(3)] + [b"{not json", b"{nor"]
        for i, data in enumerate(sends):
            assert publisher.publish(topic, data, message_id=f"m{i}").confirmed
            obs.produce(f"m{i}")
        denied = publisher.publish("elsewhere/x", b"{}", message_id="denied", stream=topic)
        assert not denied.confirmed
        refused, _ = client("rotated")
        assert not refused.is_connected()
        lost = Publisher(refused, tally).publish(topic, b"{}", message_id="refused", timeout=2)
        assert not lost.confirmed
        obs.produce("denied", acked=False)
        obs.produce("refused", acked=False)
        wait(lambda: len(handled) == 5)
    finally:
        for made in clients:
            made.loop_stop()
            made.disconnect()
    for msg in handled:
        obs.deliver(msg.message_id, msg.attempt, msg.outcome)
    assert sorted(m.message_id for m in handled) == [f"m{i}" for i in range(5)]
    assert env.errors(topic) == {
        "produce": {"auth": 1, "unavailable": 1},
        "consume": {"serialization": 2},
    }
    assert env.figures(topic) == obs.expected() == figures_of(
        produced=5, delivered=3, lost=2, attempts=5, dead_lettered=2
    )
