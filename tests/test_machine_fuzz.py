"""A fuzz target for the machine: apply, advance, drain, install, back-fills,
dumps and loads, with random bodies (well-formed, damaged, garbage) and damaged
checkpoints, in any order. The machine may refuse (EngineError and its
subclasses, naming why); it must never crash, corrupt memory, raise anything
else, or change its state on a body it rejects.

Marked `fuzz`: it runs in the sanitizer step (.ci/sanitize, AddressSanitizer
and UndefinedBehaviorSanitizer), for MSGTALLY_FUZZ_SECONDS (60 by default),
not in the README's test command.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from msgtally.reconcile import _machine
from tests.test_checkpoint import HEADER, resealed

pytestmark = pytest.mark.fuzz

T = 1_700_000_000.0
STREAMS = ("s", "t", "ü")
GROUPS = ("g", "h", "k")
IDS = (*tuple(f"m{i}" for i in range(8)), "x" * 300)

texts = st.one_of(st.sampled_from(("p", "q", "", "A1b2", "r" * 40)), st.text(max_size=8))
records = st.fixed_dictionaries(
    {
        "stream": st.sampled_from(STREAMS),
        "kind": st.sampled_from(("produce", "consume")),
        "message_id": st.sampled_from(IDS),
        "ts": st.one_of(st.floats(T - 1000, T + 5000), st.integers(0, 2**40)),
    },
    optional={
        "group": st.sampled_from(GROUPS),
        "attempt": st.one_of(st.integers(-5, 10), st.integers(0, 2**63 - 1)),
        "outcome": st.sampled_from(("ok", "error", "dead_letter")),
        "producer": st.sampled_from(("p1", "p2")),
        "seq": st.one_of(st.integers(0, 30), st.integers(-3, 2**63 - 1)),
        "record_id": texts,
        "trace_id": st.sampled_from(("AB12", "ab12", "ff")),
        "span_id": texts,
        # the classes the machine counts, and text it must reject (an unknown class)
        "error": st.one_of(st.sampled_from(_machine.ERROR_CLASSES), texts),
        "extra": st.one_of(
            st.none(), st.integers(-(2**63), 2**63), st.lists(st.booleans(), max_size=3)
        ),
    },
)
# Well-formed failures with their class, mixed in so that some bodies pass whole
# and the classes are counted (a body with one bad record is rejected whole).
failures = st.one_of(
    st.fixed_dictionaries({
        "stream": st.sampled_from(STREAMS), "kind": st.just("produce"),
        "message_id": st.sampled_from(IDS), "ts": st.floats(T - 1000, T + 5000),
        "outcome": st.just("error"), "error": st.sampled_from(_machine.ERROR_CLASSES),
    }),
    st.fixed_dictionaries({
        "stream": st.sampled_from(STREAMS), "kind": st.just("consume"),
        "message_id": st.sampled_from(IDS), "ts": st.floats(T - 1000, T + 5000),
        "group": st.sampled_from(GROUPS), "attempt": st.integers(1, 5),
        "outcome": st.sampled_from(("error", "dead_letter")),
        "error": st.sampled_from(_machine.ERROR_CLASSES),
    }),
)  # fmt: skip
marks = st.one_of(
    st.none(),
    st.lists(
        st.tuples(st.sampled_from(("p1", "p2")), st.sampled_from(STREAMS),
                  st.sampled_from(("produce", "consume")), st.sampled_from(("", *GROUPS)),
                  st.integers(-2, 40)),
        max_size=4,
    ),
)

# A Kafka slice's runs (version 3): one sequence's seqs each, some negative or huge.
runs = st.lists(
    st.tuples(st.sampled_from(("p1", "p2")), st.sampled_from(STREAMS),
              st.sampled_from(("produce", "consume", "other")), st.sampled_from(("", *GROUPS)),
              st.lists(st.one_of(st.integers(0, 40), st.integers(-3, 2**63 - 1)), max_size=8)),
    max_size=4,
)  # fmt: skip
# The groups a slice announces to every partition (version 4): now and then one malformed.
pairs = st.tuples(st.sampled_from(STREAMS), st.sampled_from((*GROUPS, "late1")))
malformed = st.one_of(st.tuples(st.sampled_from(STREAMS)),
                      st.tuples(st.sampled_from(STREAMS), st.one_of(st.none(), st.integers(0, 3))))
announced = st.one_of(
    st.lists(pairs, min_size=1, max_size=3),
    st.lists(pairs, min_size=1, max_size=3),
    st.lists(st.one_of(pairs, malformed), max_size=4),
)  # fmt: skip


@st.composite
def bodies(draw: Any) -> bytes:
    recs = draw(st.lists(st.one_of(records, failures), max_size=12))
    for r in recs:  # consumes name their group, mostly
        if r["kind"] == "consume" and "group" not in r and draw(st.integers(0, 9)):
            r["group"] = draw(st.sampled_from(GROUPS))
    version = draw(st.sampled_from((2, 2, 2, 1, 3, 3, 3, 4, 4, 4)))
    if version >= 3:  # a slice's marks are an array: nil now and then, to be refused
        slice_marks = draw(marks)
        if slice_marks is None and draw(st.integers(0, 3)):
            slice_marks = []
        groups = (draw(announced),) if version == 4 else ()
        if version == 4 and draw(st.booleans()):
            recs = []  # most partitions get the announcement without records
        body = msgspec.msgpack.encode((version, *groups, slice_marks, draw(runs), recs))
    else:
        body = msgspec.msgpack.encode((2, draw(marks), recs) if version == 2 else (1, recs))
    damage = draw(st.sampled_from(("none", "none", "flip", "cut", "insert", "garbage")))
    if damage == "flip" and body:
        b = bytearray(body)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
        body = bytes(b)
    elif damage == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif damage == "insert":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=6)) + body[at:]
    elif damage == "garbage":
        body = draw(st.binary(max_size=64))
    return body


# The error classes the machine counted over the whole run: the target feeds them.
CLASSES_COUNTED: set[str] = set()
# Kafka slices (version 3) the machine applied: the target reaches their runs.
SLICES_APPLIED = [0]
# Slices announcing groups (version 4) the machine applied.
ANNOUNCING_APPLIED = [0]


def count_slice(body: bytes, groups: list[tuple[str, str]]) -> None:
    """A body the machine applied: a Kafka slice (version 3), or one announcing groups."""
    if body[:2] == b"\x94\x03":  # [3, marks, runs, records]
        SLICES_APPLIED[0] += 1
    if groups:  # a version 4 slice that announced groups
        ANNOUNCING_APPLIED[0] += 1


def fresh(
    deadline: float = 300.0, settle: float = 10.0, remember: float = 60.0
) -> _machine.Machine:
    return _machine.Machine(deadline, settle, remember, [0.1, 1.0, 10.0])


class MachineFuzz(RuleBasedStateMachine):
    @initialize(deadline=st.sampled_from((0.5, 5.0, 300.0)), settle=st.sampled_from((0.0, 10.0)),
                remember=st.sampled_from((0.0, 60.0)))  # fmt: skip
    def start(self, deadline: float, settle: float, remember: float) -> None:
        self.core = fresh(deadline, settle, remember)
        self.now = T
        self.applied: list[bytes] = []

    @rule(body=bodies(), late=st.floats(0, 100))
    def apply(self, body: bytes, late: float) -> None:
        try:
            groups = _machine.body_groups(body)
        except _machine.BodyError:
            groups = []
        assert all(isinstance(s, str) and isinstance(g, str) for s, g in groups)
        before = self.core.dumps()
        try:
            self.core.apply(body, self.now - late)
        except _machine.BodyError:
            assert self.core.dumps() == before, "a rejected body changed the state"
        except _machine.EngineError:
            pass  # a limit of the state: the engine would start again
        else:
            self.applied.append(body)
            count_slice(body, groups)

    @rule(body=bodies(), late=st.floats(0, 100))
    def feed(self, body: bytes, late: float) -> None:
        before = self.core.dumps()
        try:
            records, new, waiting = self.core.feed(body, self.now - late, self.now)
        except _machine.BodyError:
            assert self.core.dumps() == before, "a rejected body changed the state"
        except _machine.EngineError:
            pass  # a limit of the state: the engine would start again
        else:
            if new is not None:  # groups to expect first: nothing applied
                assert new and records == 0 and not waiting
                assert all(isinstance(s, str) and isinstance(g, str) for s, g in new)
                assert self.core.dumps() == before, "a body naming new groups was applied"
                try:  # as a worker does: expected, then fed again
                    for stream, group in new:
                        self.core.expect_groups(stream, [group])
                    records, new, waiting = self.core.feed(body, self.now - late, self.now)
                except _machine.EngineError:
                    return  # a limit of the state: the engine would start again
                assert new is None, "a body named new groups once they were expected"
            self.applied.append(body)
            count_slice(body, _machine.body_groups(body))

    @rule(bodies=st.lists(bodies(), max_size=4))
    def screen(self, bodies: list[bytes]) -> None:
        try:
            new, rejected = self.core.screen(bodies)
        except _machine.EngineError:
            return
        assert all(0 <= i < len(bodies) and isinstance(why, str) for i, why in rejected)
        assert all(isinstance(s, str) and isinstance(g, str) for s, g in new)

    @rule(step=st.floats(0, 2000), lag=st.floats(0, 500))
    def advance(self, step: float, lag: float) -> None:
        self.now += step
        self.core.advance(self.now, self.now - lag)

    @rule()
    def drain(self) -> None:
        pairs, rows, missing, errors = self.core.drain()
        for _stream, _group, counts, _sum, hist, bins in pairs:
            assert all(isinstance(v, int) for v in counts.values())
            assert len(hist) == 4 and all(isinstance(k, int) for k in bins)
        assert all(len(r) == 14 for r in rows)
        assert all(n >= 0 for n in missing.values())
        assert all(n > 0 and e in _machine.ERROR_CLASSES for (_s, _k, _g, e), n in errors.items())
        CLASSES_COUNTED.update(e for (_s, _k, _g, e) in errors)

    @rule(stream=st.sampled_from(STREAMS), groups=st.lists(st.sampled_from((*GROUPS, "new")),
                                                           max_size=3))  # fmt: skip
    def expect(self, stream: str, groups: list[str]) -> None:
        self.core.expect_groups(stream, groups)

    @rule(stream=st.sampled_from(STREAMS), group=st.sampled_from(("late1", "late2")))
    def backfill(self, stream: str, group: str) -> None:
        self.core.expect(stream, group)
        for body in self.applied:
            self.core.backfill_scan(body, stream)
        self.core.backfill_finish(stream, [group])

    @rule()
    def deferred(self) -> None:
        keys = self.core.deferred_keys()
        rows = [(s, m, "g", "lost", 1, 1, 0, T, T + 300, 1, 0, 1, 0, None) for s, m in keys]
        self.core.install(rows)
        self.core.apply_deferred()

    @rule(row=st.tuples(st.sampled_from(STREAMS), st.sampled_from(IDS), st.sampled_from(GROUPS),
                        st.sampled_from(("delivered", "lost", "recovered", "unexpected", "none")),
                        st.integers(0, 1), st.integers(0, 1), st.integers(0, 1),
                        st.one_of(st.none(), st.floats(T - 10, T + 10)), st.floats(T, T + 600),
                        st.integers(0, 2**64 - 1), st.integers(0, 5), st.integers(0, 2**32 - 1),
                        st.integers(0, 1), st.one_of(st.none(), st.floats(-1, 100))))  # fmt: skip
    def install(self, row: tuple[Any, ...]) -> None:
        try:
            self.core.install([row])
        except _machine.EngineError as exc:  # a row no store holds (ok past n)
            assert "cannot be" in str(exc)

    @precondition(lambda self: not self.core.deferred_keys())
    @rule()
    def round_trip(self) -> None:
        self.core.drain()
        ck = self.core.dumps()
        again = fresh()
        again.loads(ck)
        assert again.dumps() == ck
        self.core = again

    @rule(data=st.data())
    def damaged_checkpoint(self, data: st.DataObject) -> None:
        self.core.drain()
        ck = bytearray(self.core.dumps())
        how = data.draw(st.sampled_from(("flip", "cut", "field")))
        if how == "flip":
            ck[data.draw(st.integers(0, len(ck) - 1))] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del ck[data.draw(st.integers(0, len(ck) - 1)):]
        else:  # a field edited, the checksum made right: only the field checks stand
            at = data.draw(st.integers(HEADER, len(ck) - 1))
            width = data.draw(st.sampled_from((1, 2, 4, 8)))
            value = data.draw(st.integers(0, 2 ** (8 * width) - 1))
            ck[at : at + width] = value.to_bytes(width, "little")[: len(ck) - at]
            ck = bytearray(resealed(bytes(ck)))
        other = fresh()
        try:
            other.loads(bytes(ck))
        except _machine.CheckpointError:
            stats = other.stats()
            assert stats["in_memory"] == stats["compact"] == stats["sequences"] == 0
            return
        # It loaded (an edit the format allows): the machine works on it.
        one = {"stream": "s", "kind": "produce", "message_id": "z", "ts": T}
        other.apply(msgspec.msgpack.encode((2, None, [one])), T)
        other.advance(self.now + 10**6, self.now + 10**6)
        other.drain()
        other.in_flight()
        other.dumps()

    @invariant()
    def answers(self) -> None:
        stats = self.core.stats()
        assert stats["repeats"] <= stats["records"]
        self.core.in_flight()


def test_the_machine_survives_whatever_it_is_fed() -> None:
    budget = float(os.environ.get("MSGTALLY_FUZZ_SECONDS", "60"))
    end = time.monotonic() + budget
    runs = 0
    rng = random.Random(os.environ.get("MSGTALLY_FUZZ_SEED"))
    while time.monotonic() < end:
        run_state_machine_as_test(
            MachineFuzz,
            settings=settings(
                max_examples=25, stateful_step_count=40, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), derandomize=False,
            ),
        )  # fmt: skip
        runs += 1
        rng.random()
    assert runs
    assert CLASSES_COUNTED, "no record with an error class was ever counted"
    assert SLICES_APPLIED[0], "no Kafka slice (version 3) was ever applied"
    assert ANNOUNCING_APPLIED[0], "no slice announcing groups (version 4) was ever applied"


