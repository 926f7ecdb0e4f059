"""The machine itself (msgtally.reconcile._machine): what it refuses and how it
says so, and one owner at a time. No store here: bodies straight in.

The sanitizer step (.ci/sanitize) runs this file against a build with
AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.schema import parse_batch
from msgtally.reconcile import _machine
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.outputs import VERDICT_COLUMNS, copy_verdicts, parse_copied
from msgtally.record import ERROR_CLASSES
from msgtally.store.db import open_store, write_tx
from msgtally.store.tables import verdicts
from tests.depth import examples
from tests.harness import T
from tests.test_machine_fuzz import bodies as fuzz_bodies

C = ReconcileConfig()


def fresh() -> _machine.Machine:
    return _machine.Machine(C.deadline, C.settle, C.remember, C.latency_buckets)


def body(*records: dict[str, Any], marks: list[Any] | None = None) -> bytes:
    return msgspec.msgpack.encode((2, marks, list(records)))


def sliced(*records: dict[str, Any], runs: list[Any], marks: list[Any] | None = None) -> bytes:
    """A partition's slice on the Kafka log (version 3)."""
    return msgspec.msgpack.encode((3, [] if marks is None else marks, runs, list(records)))


def announcing(*groups: list[Any], records: list[Any] | None = None) -> bytes:
    """A slice with the groups every partition is to expect (version 4)."""
    return msgspec.msgpack.encode((4, list(groups), [], [], records or []))


RUN = ["p", "s", "produce", "", [1, 2]]


def rec(mid: str = "m", kind: str = "produce", **more: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"stream": "s", "kind": kind, "message_id": mid, "ts": T}
    if kind == "consume":
        r["group"] = "g"
    r.update(more)
    return r


GOOD = rec("a"), rec("a", "consume", ts=T + 1)

REJECTED = [
    (b"\xc1", "log body: not a msgpack array"),
    (msgspec.msgpack.encode((5, None, [], [], [], [])),
     "log body: not a msgpack array [version, marks, records]"),
    (msgspec.msgpack.encode((5, None, [], [], [])),
     "log body: version 5, this machine reads 1, 2, 3 and 4"),
    (msgspec.msgpack.encode((4, None, [], [])), "log body: version 4 with 4 parts"),
    (msgspec.msgpack.encode((4, None, [], [], [])),
     "log body: version 4: the groups are not an array"),
    (msgspec.msgpack.encode((4, [], None, [], [])),
     "log body: version 4: the marks are not an array"),
    (msgspec.msgpack.encode((4, [], [], None, [])),
     "log body: version 4: the runs are not an array"),
    (announcing(["s"]), "log body: group 0: not [stream, group]"),
    (announcing(["s", "g", "h"]), "log body: group 0: not [stream, group]"),
    (announcing(["s", "g"], ["s", None]), "log body: group 1: a name is nil"),
    (announcing([3, "g"]), "log body: group 0: a name is not a string"),
    (announcing(["s", "g" * 1025]), "log body: group 0: a name is past the limit"),
    (announcing(["s", "QQ"]).replace(b"QQ", b"\xc3\x28"), "log body: group 0: a name is not UTF-8"),
    (announcing(["s", "g"])[:3] + b"\xdd\xff\xff\xff\xff", "log body: the groups are truncated"),
    (announcing(["s", "g"], records=[rec("b", ts="soon")]),
     "log body: record 0: field 'ts' is not a number"),
    (msgspec.msgpack.encode((3, None, [])), "log body: version 3 with 3 parts"),
    (msgspec.msgpack.encode((3, None, [], [])), "log body: version 3: the marks are not an array"),
    (msgspec.msgpack.encode((3, [], None, [])), "log body: version 3: the runs are not an array"),
    (sliced(*GOOD, runs=[RUN, ["p", "s", "produce", "", [3, -1]]]),
     "log body: run 1: seq 1 is not an integer of 0 or more"),
    (sliced(*GOOD, runs=[["p", "s", "produce", "", [2.5]]]),
     "log body: run 0: seq 0 is not an integer of 0 or more"),
    (sliced(*GOOD, runs=[["p", "s", "produce", "", [None]]]),
     "log body: run 0: seq 0 is not an integer of 0 or more"),
    (sliced(*GOOD, runs=[["p", "s", "produce", ""]]),
     "log body: run 0: not [producer, stream, kind, group, seqs]"),
    (sliced(*GOOD, runs=[["p", "s", "sent", "", [1]]]),
     "log body: run 0: the kind is neither produce nor consume"),
    (sliced(*GOOD, runs=[["p", None, "produce", "", [1]]]), "log body: run 0: a name is nil"),
    (sliced(*GOOD, runs=[["p", 3, "produce", "", [1]]]), "log body: run 0: a name is not a string"),
    (sliced(*GOOD, runs=[["p", "s", "produce", "", 1]]),
     "log body: run 0: the seqs are not an array"),
    (sliced(*GOOD, runs=[["p" * 1025, "s", "produce", "", [1]]]),
     "log body: run 0: a name is past the limit"),
    (sliced(*GOOD, runs=[["QQ", "s", "produce", "", [1]]]).replace(b"QQ", b"\xc3\x28"),
     "log body: run 0: a name is not UTF-8"),
    (sliced(runs=[["p", "s", "produce", "", []]]).replace(b"\xa0\x90", b"\xa0\xdd\xff\xff\xff\xff"),
     "log body: the runs are truncated"),
    (sliced(*GOOD, runs=[RUN], marks=[["p", "s", "produce", "", "x"]]),
     "log body: mark 0: 'last' is not an integer"),
    (sliced(runs=[RUN, RUN])[:-4], "log body: the runs are truncated"),
    (msgspec.msgpack.encode((2, 7, [])), "log body: the marks are neither nil nor an array"),
    (msgspec.msgpack.encode((2, None, 5)), "log body: the records are not an array"),
    (b"\x93\x02\xc0\xdd\xff\xff\xff\xff", "log body: 4294967295 records in 0 bytes"),
    (body(*GOOD, rec("b", ts="soon")), "log body: record 2: field 'ts' is not a number"),
    (body(*GOOD, {"stream": "s", "kind": "produce", "message_id": "c"}),
     "log body: record 2: field 'ts' is missing"),
    (body(*GOOD, rec("b", ts=float("nan"))), "log body: record 2: field 'ts' is not finite"),
    (body(*GOOD, rec("b", kind="sent")),
     "log body: record 2: field 'kind' is neither produce nor consume"),
    (body(*GOOD, rec("b", outcome="maybe")),
     "log body: record 2: field 'outcome' is none of ok, error, dead_letter"),
    (body(*GOOD, {**rec("b", "consume"), "group": None}),
     "log body: record 2: a consume without field 'group'"),
    (body(*GOOD, rec("x" * 1025)),
     "log body: record 2: field 'message_id' is 1025 bytes, past the limit"),
    (body(*GOOD, rec(stream=3)), "log body: record 2: field 'stream' is not a string"),
    (body(*GOOD, {1: 2}), "log body: record 2: a key is not a string"),
    (body(*GOOD, rec("b"), marks=[["p", "s", "produce", "g"]]),
     "log body: mark 0: not [producer, stream, kind, group, last]"),
    (body(*GOOD)[:-3], "log body: record 1: truncated"),
    (body(*GOOD, rec("QQ")).replace(b"QQ", b"\xc3\x28"),  # not UTF-8: no store writes it
     "log body: record 2: field 'message_id' is not UTF-8"),
    (body(*GOOD, marks=[["p", "QQ", "produce", "", 3]]).replace(b"QQ", b"\xed\xff"),
     "log body: mark 0: a name is not UTF-8"),
    (body(*GOOD, rec("b", outcome="error", error="network")),
     "log body: record 2: field 'error' is none of the error classes"),
    (body(*GOOD, rec("b", error="auth")), "log body: record 2: field 'error' on an ok record"),
    (body(*GOOD, rec("b", outcome="error", error=5)),
     "log body: record 2: field 'error' is not a string"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "reason"), REJECTED)
def test_a_body_the_machine_rejects_names_the_fault_and_changes_nothing(
    bad: bytes, reason: str
) -> None:
    core = fresh()
    core.apply(body(rec("before"), rec("before", "consume", ts=T + 2)), T)
    state = core.dumps()
    with pytest.raises(_machine.BodyError) as caught:
        core.apply(bad, T)
    assert str(caught.value).startswith(reason)
    assert not isinstance(caught.value, MemoryError)
    assert core.dumps() == state  # nothing of it applied, not even its first records
    core.apply(body(*GOOD), T)  # and the machine goes on
    assert core.stats()["records"] == 4


def test_error_classes_are_counted_per_record_applied_once() -> None:
    """Each record's class, when it applies: a resend (in memory or in compact
    form), counts nothing; a record without a class counts in none."""
    core = fresh()
    assert _machine.ERROR_CLASSES == ERROR_CLASSES  # the C table is the record's vocabulary
    failed = [
        rec("a", outcome="error", error="timeout"),
        rec("a", attempt=2),
        rec("a", "consume", ts=T + 1, outcome="error", error="serialization"),
        rec("a", "consume", ts=T + 2, attempt=2),
        rec("b", outcome="error"),
        rec("c", "consume", group="h", outcome="dead_letter", error="poison"),
    ]
    core.apply(body(*failed), T)
    core.apply(body(*failed), T)  # a resend
    *_, errors = core.drain()
    assert errors == {
        ("s", "produce", "", "timeout"): 1,
        ("s", "consume", "g", "serialization"): 1,
        ("s", "consume", "h", "poison"): 1,
    }
    plain = [rec("d"), rec("d", "consume", ts=T + 1), rec("d", "consume", group="h", ts=T + 1)]
    core.apply(body(*plain), T)
    core.advance(T + 1000, T + 1000)  # d judged and kept in compact form
    core.drain()
    # the same record but for its class is another record; the compact id's resend is not
    core.apply(body(*plain, rec("d", "consume", ts=T + 1, outcome="error", error="auth")), T)
    *_, errors = core.drain()
    assert errors == {("s", "consume", "g", "auth"): 1}
    assert core.drain()[3] == {}  # drained: nothing twice


def test_a_body_past_the_limit_of_groups_is_rejected_whole() -> None:
    limit = _machine.MAX_GROUPS_PER_STREAM
    core = fresh()
    core.apply(body(*(rec("m", "consume", group=f"g{i}") for i in range(limit - 1))), T)
    state = core.dumps()
    two_more = body(rec("n"), rec("n", "consume", group="x"), rec("n", "consume", group="y"))
    with pytest.raises(_machine.BodyError, match=f"record 2: a new consumer group of stream 's', "
                       f"which has the limit of {limit} groups"):  # fmt: skip
        core.apply(two_more, T)
    assert core.dumps() == state


def test_the_groups_a_body_announces_are_its_new_groups_as_its_consumes_are() -> None:
    """A slice of version 4 names the groups every partition is to expect: screen
    and new_groups report those not expected yet (first, then its consumes'), each
    once; body_groups lists them (a partition announces the others through the
    store); apply expects them, records or none; the limit of groups per stream
    counts them, naming the group past it."""
    core = fresh()
    core.apply(body(rec("m"), rec("m", "consume")), T)
    announced = announcing(["s", "g"], ["s", "late"], ["t", "late"], ["s", "late"],
                           records=[rec("n"), rec("n", "consume", group="other")])  # fmt: skip
    want = [("s", "late"), ("t", "late"), ("s", "other")]
    assert core.screen([announced]) == (want, [])
    assert core.new_groups([announced]) == want
    assert _machine.body_groups(announced) == [("s", "g"), ("s", "late"), ("t", "late"),
                                               ("s", "late")]  # fmt: skip
    assert _machine.body_groups(body(rec("n"))) == []  # announces nothing
    with pytest.raises(_machine.BodyError, match="group 0: a name is nil"):
        _machine.body_groups(announcing(["s", None]))
    assert core.apply(announced, T + 1) == 2
    assert core.expected() == {"s": ["g", "late", "other"], "t": ["late"]}
    assert core.screen([announced]) == ([], [])  # announced again: nothing new
    assert core.apply(announcing(["u", "solo"]), T + 2) == 0  # no records here: expected still
    assert core.expected()["u"] == ["solo"]
    limit = _machine.MAX_GROUPS_PER_STREAM
    core.apply(body(*(rec("m", "consume", group=f"g{i}") for i in range(limit - 4))), T)
    state = core.dumps()
    with pytest.raises(_machine.BodyError, match=f"group 1: a new consumer group of stream 's', "
                       f"which has the limit of {limit} groups"):  # fmt: skip
        core.apply(announcing(["s", "x"], ["s", "y"]), T)
    assert core.dumps() == state


def test_screen_names_each_body_the_machine_would_reject() -> None:
    """The engine's tick screens its rows first: the bodies it would reject are
    set aside, the groups of the others are back-filled before they apply. The
    new groups of one body count against the limit of the next."""
    limit = _machine.MAX_GROUPS_PER_STREAM
    core = fresh()
    half = [rec("m", "consume", group=f"a{i}") for i in range(limit // 2)]
    other = [rec("m", "consume", group=f"b{i}") for i in range(limit // 2)]
    last = body(rec("m", "consume", group="c"))
    bodies = [body(*half), body(rec("q", ts="x")), body(*other), last]
    new, rejected = core.screen(bodies)
    assert [i for i, _ in rejected] == [1, 3]
    assert rejected[0][1] == "log body: record 0: field 'ts' is not a number"
    assert "limit of 1024 groups" in rejected[1][1]
    assert len(new) == limit and ("s", "c") not in new
    assert core.stats()["records"] == 0  # screening applies nothing


def test_a_state_limit_is_an_engine_error_not_a_memory_error() -> None:
    core = fresh()
    for i in range(_machine.MAX_GROUPS_PER_STREAM):
        core.expect("s", f"g{i}")
    with pytest.raises(_machine.EngineError) as caught:
        core.expect("s", "one-more")
    assert type(caught.value) is _machine.EngineError
    assert "1024 consumer groups, the limit of groups per stream" in str(caught.value)


# --- one owner at a time -------------------------------------------------------------------


def test_a_second_call_while_one_runs_is_refused_and_the_first_is_whole() -> None:
    """apply() runs without the GIL; another thread calling the same machine
    meanwhile is refused (BusyError), never let in to share its state."""
    records = [
        {"stream": "s", "kind": "produce", "message_id": f"m{i}", "ts": T} for i in range(200_000)
    ]
    big = logbody.encode(parse_batch(records), None)
    core = fresh()
    refused = threading.Event()
    applied = []

    def owner() -> None:
        for _ in range(50):  # until the other thread has been refused once
            applied.append(core.apply(big, T))
            if refused.is_set():
                return

    def intruder() -> None:
        while len(applied) < 50 and not refused.is_set():
            try:
                core.stats()
            except _machine.BusyError as exc:
                assert "busy" in str(exc)
                refused.set()

    threads = [threading.Thread(target=owner), threading.Thread(target=intruder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refused.is_set()
    stats = core.stats()  # free again once the owner's call returned
    assert stats["records"] == 200_000 * len(applied)
    assert stats["repeats"] == 200_000 * (len(applied) - 1)
    assert stats["in_memory"] == 200_000


def test_machines_share_nothing() -> None:
    """Two machines fed the same bodies, one of them twice as many other bodies
    in between, end in the same state: nothing lives outside a machine."""
    one, two = fresh(), fresh()
    for i in range(100):
        two.apply(body(rec(f"other{i}", stream="t")), T)
    for core in (one, two):
        core.apply(body(*GOOD, rec("b"), rec("b", "consume", outcome="error")), T)
        core.advance(T + 400, T + 400)
    drained = [core.drain() for core in (one, two)]
    s_pairs = [[p for p in pairs if p[0] == "s"] for pairs, _rows, _missing, _errors in drained]
    assert s_pairs[0] == s_pairs[1]
    assert drained[0][1] == drained[1][1]


def test_a_group_back_filled_gets_one_row_whether_its_id_is_in_memory_compact_or_gone() -> None:
    """The verdict row a new group is owed for an id produced before it is the same
    from each of the three places the id may be: in memory (a slot), in compact
    form (taken back into memory: its produce attempt kept), or forgotten (found
    by the scan of the log)."""
    plain = body(rec("d"), rec("d", "consume", ts=T + 1))
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for where, at in (("in memory", T + 1), ("compact", T + 315), ("gone", T + 1000)):
        core = fresh()
        core.apply(plain, T)
        core.advance(at, at)
        core.drain()
        core.expect_groups("s", ["late"])
        core.backfill_scan(plain, "s")
        core.backfill_finish("s", ["late"])
        core.advance(T + 20_000, T + 20_000)
        rows[where] = [tuple(r) for r in core.drain()[1] if r[2] == "late"]
    assert rows["compact"] == rows["in memory"] == rows["gone"], rows
    (row,) = rows["gone"]
    assert (row[3], row[VERDICT_COLUMNS.index("max_attempt")]) == ("lost", 1)


def test_one_scan_back_fills_several_streams_each_finished_on_its_own() -> None:
    """A back-fill may read the log once for several streams (each body scanned for
    each); each stream's finish owes its own ids alone, as separate scans would."""
    log = [body(rec(f"m{i}", stream=s), rec(f"m{i}", "consume", stream=s, ts=T + 1))
           for i in range(5) for s in ("s", "t")]  # fmt: skip
    owed: dict[str, list[int]] = {}
    rows: dict[str, set[tuple[Any, ...]]] = {}
    for how in ("one scan", "a scan each"):
        core = fresh()
        for b in log:
            core.apply(b, T)
        core.advance(T + 1000, T + 1000)  # judged and forgotten: only the scan finds them
        core.drain()
        core.expect_groups("s", ["new"])
        core.expect_groups("t", ["new", "newer"])
        streams = (("s", ["new"]), ("t", ["new", "newer"]))
        if how == "one scan":
            for b in log:
                for s, _ in streams:
                    core.backfill_scan(b, s)
            owed[how] = [core.backfill_finish(s, g) for s, g in streams]
        else:
            owed[how] = []
            for s, g in streams:
                for b in log:
                    core.backfill_scan(b, s)
                owed[how].append(core.backfill_finish(s, g))
        rows[how] = {tuple(r) for r in core.drain()[1]}
    assert owed["one scan"] == owed["a scan each"] == [5, 10]
    assert rows["one scan"] == rows["a scan each"]
    assert {(r[0], r[2]) for r in rows["one scan"]} == {("s", "new"), ("t", "new"), ("t", "newer")}


@settings(
    max_examples=examples(30, 60), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(steps=st.lists(st.tuples(fuzz_bodies(), st.floats(0, 100), st.floats(0, 400)), max_size=25))
def test_feed_is_screen_then_apply_then_advance(steps: list[tuple[bytes, float, float]]) -> None:
    """A worker's one call per message (`feed`: the body read once) leaves the machine
    exactly as the three calls it replaces: screen, expect what it names, apply,
    advance; bodies the machine rejects change neither."""
    one, three = (_machine.Machine(5.0, 10.0, 60.0, [0.1, 1.0, 10.0]) for _ in range(2))
    now = T
    for body, late, step in steps:
        now += step
        new, rejected = three.screen([body])
        try:
            records, named, waiting = one.feed(body, now - late, now)
            if named is not None:
                assert sorted(set(named)) == sorted(set(new)) and records == 0
                for stream, group in named:
                    one.expect_groups(stream, [group])
                records, named, waiting = one.feed(body, now - late, now)
        except _machine.BodyError as exc:
            assert rejected and str(exc) == rejected[0][1]
            continue
        assert not rejected and named is None and not waiting
        for stream, group in new:
            three.expect_groups(stream, [group])
        assert records == three.apply(body, now - late)
        three.advance(now, now)
        assert one.dumps() == three.dumps()
    one.advance(now + 10**4, now + 10**4)
    three.advance(now + 10**4, now + 10**4)
    assert one.drain() == three.drain()


@settings(
    max_examples=examples(20, 40), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(steps=st.lists(st.tuples(fuzz_bodies(), st.floats(0, 100), st.floats(0, 400)), max_size=25))
def test_drain_copy_is_drain_as_copy_text(steps: list[tuple[bytes, float, float]]) -> None:
    """The worker's verdict rows as COPY text (`drain_copy`) read back to the rows
    `drain` gives, every field exact, in the same order."""
    one, other = (_machine.Machine(5.0, 10.0, 60.0, [0.1, 1.0, 10.0]) for _ in range(2))
    now = T
    for body, late, step in steps:
        now += step
        for m in (one, other):
            with contextlib.suppress(_machine.BodyError):
                m.apply(body, now - late)
            m.advance(now, now - late)
    for m in (one, other):
        m.advance(now + 10**4, now + 10**4)
    pairs, rows, missing, errors = one.drain()
    sketches = _machine.Sketches()
    pairs2, text, missing2, errors2 = other.drain_copy(sketches)
    assert (missing, errors) == (missing2, errors2)
    # The pairs the same but for their sketch bins, which went into `sketches`.
    assert [p[:5] for p in pairs] == [p[:5] for p in pairs2] and not any(p[5] for p in pairs2)
    assert _sketch_rows(sketches) == _summed_bins([(s, g, bins) for s, g, *_, bins in pairs])
    assert text.count(b"\n") == len(rows)
    assert parse_copied(text, [(r[0], r[1]) for r in rows]) == rows


def _sketch_rows(sketches: _machine.Sketches) -> dict[tuple[str, str, int], int]:
    rows = list(zip(*sketches.columns(), strict=True))
    assert len({(s, g, b) for s, g, b, _n in rows}) == len(rows)  # a row per bin
    return {(s, g, b): n for s, g, b, n in rows}


def _summed_bins(bins: list[tuple[str, str, dict[int, int]]]) -> dict[tuple[str, str, int], int]:
    out: dict[tuple[str, str, int], int] = {}
    for stream, group, of in bins:
        for b, n in of.items():
            out[(stream, group, b)] = out.get((stream, group, b), 0) + n
    return {k: n for k, n in out.items() if n}


names = st.sampled_from(["a", "b", "\u00e9", ""])
bin_maps = st.dictionaries(st.integers(-(2**31) + 1, 2**31 - 1), st.integers(-(2**40), 2**40),
                           max_size=300)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.lists(st.tuples(names, names, bin_maps), max_size=6), max_size=5))
def test_sketches_sum_bins(parts: list[list[tuple[str, str, dict[int, int]]]]) -> None:
    """Sketches sums bins per (stream, group) as a dict would, added a pair at a
    time and merged from other Sketches (a worker's partitions), a row for each
    bin whose sum is not 0."""
    total = _machine.Sketches()
    for part in parts:
        one = _machine.Sketches()
        for stream, group, bins in part:
            one.add(stream, group, bins)
        assert _sketch_rows(one) == _summed_bins(part)
        total.merge(one)
    assert _sketch_rows(total) == _summed_bins([b for part in parts for b in part])


def test_sketches_refuse_what_they_cannot_hold() -> None:
    sketches = _machine.Sketches()
    with pytest.raises(ValueError, match="out of range"):
        sketches.add("s", "g", {-(2**31): 1})
    with pytest.raises(ValueError, match="out of range"):
        sketches.add("s", "g", {2**40: 1})
    with pytest.raises(OverflowError):
        sketches.add("s", "g", {1: 2**70})
    with pytest.raises(TypeError):
        sketches.merge({})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sketches.merge(sketches)
    with pytest.raises(TypeError):
        _machine.Machine(5.0, 10.0, 60.0, [1.0]).drain_copy({})  # type: ignore[arg-type]


@pytest.mark.postgres
def test_copy_text_escapes_what_delimits_it(pg_url: str) -> None:
    """Ids with tabs, newlines, backslashes, carriage returns and other control
    characters come back whole from COPY text, in its parse and through
    PostgreSQL's COPY into the verdicts table; of one id's rows, the last."""
    ids = ["a\tb", "c\nd", "e\\f", "g\rh", "i\x0bj\x1ck\u2028", "\\N", "plain"]
    m = _machine.Machine(5.0, 0.0, 0.0, [0.1])
    m.expect_groups("s", ["g"])  # each id lost for it: a verdict row each
    m.apply(msgspec.msgpack.encode((1, [{"stream": "s", "kind": "produce", "message_id": i,
                                         "ts": T} for i in ids])), T)  # fmt: skip
    m.advance(T + 100, T + 100)
    _pairs, text, _missing, _errors = m.drain_copy(_machine.Sketches())
    rows = parse_copied(text, [("s", i) for i in ids])
    assert sorted(r[1] for r in rows) == sorted(ids)
    store = open_store(pg_url)
    try:
        earlier = text.replace(b"\tlost\t", b"\tdelivered\t")  # the same rows, older
        with write_tx(store) as conn:
            copy_verdicts(conn, [earlier, text])
        with store.connect() as conn:
            got = conn.execute(select(*(verdicts.c[c] for c in VERDICT_COLUMNS))).all()
        assert sorted(tuple(r) for r in got) == sorted(rows)
    finally:
        store.dispose()
