"""An id's records in several requests: every figure depends on the requests the
collector accepted (their receipt times and bodies) alone, never on how the
single engine groups them into passes, nor on how the requests are sliced over
the Kafka log's partitions (docs/definitions.md, "When an id is judged").

One history, cut into requests at random (an id's records spread over several,
deliveries out of ts order, requests seconds or deadlines apart), goes:

- to the single engine in one pass after the last request;
- to the single engine live: passes between requests at random, a random
  budget of records per pass, and a crash (no checkpoint) at a random point
  that the next engine recovers from; the consumer groups configured, or
  found as they come (each back-filled at the request that names it first);
- to the partitions' machines (msgtally.reconcile.partitioned.partition, no
  broker), fed the slices a collector writes, with heartbeats or not where a
  partition has no slice, commits at random, and a partition taken over by a
  new owner (a worker's crash) at a random point;

and every figure of the three stores is the same: counts, latency sums and
quantiles, latency buckets, the ids of every discrepancy and their latencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from msgtally.ingest.intake.kafka_log import slices
from msgtally.ingest.intake.schema import parse_batch
from msgtally.ingest.shim.wire import record_to_json
from msgtally.oracle import ID_KINDS, Record
from msgtally.reconcile.config import DEFAULT_BUDGET, ReconcileConfig
from msgtally.reconcile.engine import Reconciler, reconcile
from msgtally.reconcile.partitioned.partition import Partition
from msgtally.slis.read.query import read_discrepancies
from msgtally.store.db import open_store, write_tx
from msgtally.store.kafka_log import encode_message, heartbeat
from msgtally.store.tables import partitions
from tests.harness import T, ingest, wipe
from tests.partitioned_support import assert_same

GROUPS = ("g1", "g2")
# Offsets from T of a produce, and delays of a consume after it: in time, around
# the deadline (300 s), late, and before the produce (clocks differ).
T0S = (0.0, 0.5, 3.0)
DELAYS = (-1.0, 0.25, 1.0, 2.0, 7.5, 299.0, 300.0, 301.0, 400.0)
# Seconds between two requests: together, within settle (10 s), past it, past
# `remember`, past a deadline.
GAPS = (0.0, 0.5, 4.0, 11.0, 75.0, 320.0)
FINAL = T + 10**5  # past every deadline + settle + remember


class Split:
    """A generated history: its requests, each with its receipt time."""

    def __init__(
        self, requests: list[list[Record]], received: list[float], remember: float,
        configured: bool,
    ) -> None:  # fmt: skip
        self.requests, self.received = requests, received
        self.configured = configured  # the groups expected from the start, else as they come
        expected = {"s": GROUPS} if configured else {}
        self.config = ReconcileConfig(expected_groups=expected, remember=remember)

    def describe(self) -> str:
        lines = [f"remember {self.config.remember}, groups configured: {self.configured}"]
        for at, request in zip(self.received, self.requests, strict=True):
            lines.append(f"request at +{at - T:g}:")
            lines += [f"  {r.kind} {r.message_id} {r.group or '-'} t=+{r.ts - T:g} "
                      f"a={r.attempt} {r.outcome}" for r in request]  # fmt: skip
        return "\n".join(lines)


@st.composite
def splits(draw: st.DrawFn) -> Split:
    records: list[Record] = []
    for mid in draw(st.lists(st.sampled_from("abcde"), min_size=1, max_size=4, unique=True)):
        t0 = T + draw(st.sampled_from(T0S))
        sends = draw(st.sampled_from(((), ("ok",), ("ok",), ("error",), ("error", "ok"))))
        for attempt, outcome in enumerate(sends, 1):
            records.append(Record("s", "produce", mid, t0 + attempt - 1, "", attempt, outcome,
                                  record_id=f"{mid}/p{attempt}"))  # fmt: skip
        for g in GROUPS:
            for k in range(draw(st.integers(0, 3))):
                outcome = draw(st.sampled_from(("ok", "ok", "ok", "error", "dead_letter")))
                records.append(Record(
                    "s", "consume", mid, t0 + draw(st.sampled_from(DELAYS)), g,
                    draw(st.integers(1, 2)), outcome, record_id=f"{mid}/{g}/{k}",
                ))  # fmt: skip
    count = draw(st.integers(1, 5))
    order = draw(st.permutations(range(len(records))))
    cut = [draw(st.integers(0, count - 1)) for _ in records]
    requests = [q for q in ([records[i] for i in order if cut[i] == n] for n in range(count)) if q]
    if draw(st.booleans()):  # a shim's resend of a request, later
        requests.insert(draw(st.integers(1, len(requests))), draw(st.sampled_from(requests)))
    received, at = [], T + draw(st.sampled_from((0.0, 2.0, 20.0)))
    for _ in requests:
        received.append(at)
        at += draw(st.sampled_from(GAPS))
    return Split(requests, received, draw(st.sampled_from((0.0, 60.0))), draw(st.booleans()))


# -- the single engine ---------------------------------------------------------


def one_pass(store: Engine, split: Split) -> None:
    for request, at in zip(split.requests, split.received, strict=True):
        ingest(store, request, received_at=at)
    reconcile(store, split.config, FINAL)


def live(store: Engine, split: Split, data: st.DataObject) -> None:
    """Passes between requests (at a time before the next request's receipt, as a
    live engine's clock), `budget` records a pass; a crash at a random pass."""
    budget = data.draw(st.sampled_from((1, 2, 5, DEFAULT_BUDGET)), label="budget")
    config = ReconcileConfig(expected_groups=split.config.expected_groups,
                             remember=split.config.remember, budget=budget)  # fmt: skip
    every = data.draw(st.sampled_from((0.0, 3600.0)), label="checkpoint every (s)")
    crash = data.draw(st.integers(0, len(split.requests)), label="crash after request")
    engine = Reconciler(store, config, checkpoint_every=every).open()
    try:
        for i, (request, at) in enumerate(zip(split.requests, split.received, strict=True)):
            ingest(store, request, received_at=at)
            following = split.received[i + 1] if i + 1 < len(split.received) else FINAL
            if data.draw(st.booleans(), label=f"pass after request {i}"):
                now = data.draw(st.sampled_from((at, (at + following) / 2, following)))
                engine.catch_up(now, final=False)
            if i == crash:  # no checkpoint: the next engine replays the ticks since the last
                engine.close(checkpoint=False)
                engine = Reconciler(store, config, checkpoint_every=every).open()
        engine.catch_up(FINAL)
    finally:
        engine.close()


# -- the partitions ------------------------------------------------------------


class Parts:
    """The partitions of a Kafka log without a broker: each one's messages, and
    its machine as a worker owns it."""

    def __init__(self, store: Engine, config: ReconcileConfig, count: int) -> None:
        self.store, self.config = store, config
        self.messages: list[list[bytes]] = [[] for _ in range(count)]
        with write_tx(store) as conn:
            for p in range(count):
                conn.execute(partitions.insert().values(
                    part=p, epoch=0, next_offset=0, clock=0.0, owner=""))  # fmt: skip
        self.owned = [self.take(p) for p in range(count)]
        for part in self.owned:
            part.expect([("s", g) for g in GROUPS], self.scan)
            part.commit(checkpoint=True)

    def scan(self, part: int, before: int) -> Iterator[bytes]:
        return iter(self.messages[part][:before])

    def take(self, p: int) -> Partition:
        """A new owner: the checkpoint loaded, the messages after it fed again (those
        committed already replayed, writing nothing)."""
        part = Partition.take(self.store, self.config, p, "test")
        for offset in range(part.next_offset, len(self.messages[p])):
            part.feed(offset, self.messages[p][offset], self.scan)
        return part

    def send(self, p: int, message: bytes) -> None:
        self.messages[p].append(message)
        self.owned[p].feed(len(self.messages[p]) - 1, message, self.scan)


def partitioned(store: Engine, split: Split, data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 3), label="partitions")
    parts = Parts(store, split.config, count)
    for i, (request, at) in enumerate(zip(split.requests, split.received, strict=True)):
        bodies = slices(parse_batch([record_to_json(r) for r in request]), None, count)
        for p in range(count):
            if p in bodies:
                parts.send(p, encode_message(f"request {i}", at, bodies[p]))
            elif data.draw(st.booleans(), label=f"heartbeat to {p} at request {i}"):
                parts.send(p, heartbeat(at))
            if data.draw(st.booleans(), label=f"commit {p} after request {i}"):
                parts.owned[p].commit(checkpoint=data.draw(st.booleans(), label="checkpoint"))
        if data.draw(st.integers(0, 4), label=f"take over after request {i}") == 0:
            p = data.draw(st.integers(0, count - 1), label="partition taken over")
            parts.owned[p] = parts.take(p)  # what its last owner did not commit is lost
    for p in range(count):
        parts.send(p, heartbeat(FINAL))
        parts.owned[p].commit()


# -- the comparison ------------------------------------------------------------


def latencies(store: Engine) -> dict[str, dict[tuple[str, str], float | None]]:
    """Per discrepancy kind, the latency of each (group, id) row."""
    out: dict[str, dict[tuple[str, str], float | None]] = {}
    with store.connect() as conn:
        for kind in ID_KINDS:
            rows = read_discrepancies(conn, kind=kind, limit=10_000)
            out[kind] = {(r["group"], r["message_id"]): r["latency"] for r in rows}
    return out


def stores(tmp_path: Path) -> list[Engine]:
    return [open_store(f"sqlite:///{tmp_path / name}.db") for name in ("one", "live", "parts")]


def test_figures_depend_on_the_requests_alone(tmp_path: Path) -> None:
    one, passes, parts = stores(tmp_path)

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
        # A failure shrinks to one minimal history without the explain phase: a
        # failing run stays within minutes.
        report_multiple_bugs=False, phases=[Phase.explicit, Phase.reuse, Phase.generate,
                                            Phase.shrink],
    )
    @given(split=splits(), data=st.data())
    def check(split: Split, data: st.DataObject) -> None:
        note(split.describe())
        for store in (one, passes, parts):
            wipe(store)
        one_pass(one, split)
        live(passes, split, data)
        want = latencies(one)
        assert latencies(passes) == want
        assert_same(passes, one)
        # A group that first comes mid-history reaches the partitions whose slices
        # do not name it through the store, when each one's worker looks
        # (docs/scaling.md, "Reads that differ"): the partitions are compared with
        # the groups configured.
        if split.configured:
            partitioned(parts, split, data)
            assert latencies(parts) == want
            assert_same(parts, one)

    try:
        check()
    finally:
        for store in (one, passes, parts):
            store.dispose()

