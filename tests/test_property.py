"""Property tests: random delivery histories through the store against the oracle.

- one shot: every record ingested, then one pass past every deadline + settle,
  must give exactly the oracle's figures and discrepancy ids (rule 4);
- incremental: the same records in several batches with passes in between at
  increasing times, every record in before its id could be classified, must
  end with the same figures as the one-shot pass (rule 5), and no counter
  ever goes down between passes;
- any arrival order (records after their id was classified, rule 3): counters
  never go down, figures stay consistent with each other and with the
  discrepancy reports, and a resend of everything changes nothing.

Each example empties the fixture's store first (msgtally.store.tables.metadata), so
one database serves every example, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from msgtally.oracle import COUNT_NAMES, ID_KINDS, Record, error_counts, oracle
from msgtally.reconcile.config import DEFAULT_BUDGET, ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.record import ERROR_CLASSES
from msgtally.slis.read.query import read_discrepancies
from tests.depth import examples
from tests.harness import (
    Figures,
    T,
    assert_discrepancies,
    assert_figures,
    discrepancy_ids,
    errors,
    figures,
    in_time_order_across,
    ingest,
    repeats,
    wipe,
)

STREAMS = ("s1", "s2")
GROUPS = ("g1", "g2", "g3")
IDS = ("m1", "m2", "m3", "m4", "m5")
# Offsets from T: around 0, around both deadlines (300 s default, 60 s for s2
# when configured), well beyond, and a few not exact in binary.
OFFSETS = (
    -1.0, 0.0, 0.1, 0.5, 1.0, 2.5, 59.0, 60.0, 60.1, 61.0,
    299.0, 299.9, 300.0, 300.5, 301.0, 360.0, 600.0, 7200.0,
)
# Times of the passes between batches in the incremental test, as offsets.
PASS_OFFSETS = (30.0, 70.0, 71.0, 200.0, 309.0, 310.0, 311.0, 400.0, 800.0, 7509.0, 7600.0)


class History:
    """A generated history: records in generation order and the reconcile config."""

    def __init__(self, records: list[Record], config: ReconcileConfig) -> None:
        self.records = records
        self.config = config
        self.notes: list[str] = []

    def final_now(self) -> float:
        longest = max([self.config.deadline, *self.config.stream_deadlines.values()])
        return max(r.ts for r in self.records) + longest + self.config.settle + 1

    def __repr__(self) -> str:
        return "History(\n" + self.describe() + "\n)"

    def describe(self) -> str:
        c = self.config
        lines = [
            f"deadline={c.deadline} stream_deadlines={dict(c.stream_deadlines)}"
            f" expected_groups={dict(c.expected_groups)} settle={c.settle} budget={c.budget}"
        ]
        lines.extend("  " + _short(r) for r in self.records)
        return "\n".join(lines + self.notes)


def _short(r: Record) -> str:
    extra = f" rid={r.record_id}" if r.record_id else ""
    extra += f" error={r.error}" if r.error else ""
    grp = f" {r.group}" if r.group else ""
    return (
        f"{r.kind:7} {r.stream}/{r.message_id}{grp} t={r.ts - T:+g}"
        f" a={r.attempt} {r.outcome}{extra}"
    )


# Produces mostly at 0, so that consume offsets fall around the deadlines.
PRODUCE_OFFSETS = (0.0, 0.0, 0.0, 0.1, -1.0, 1.0, 60.0, 300.0)


def _record_id(draw: Callable[..., Any], counter: list[int]) -> str | None:
    if not draw(st.booleans()):
        return None
    counter[0] += 1
    return f"r{counter[0]}"


def _error(draw: Callable[..., Any], outcome: str) -> str | None:
    """A failed record's class, often none (not classified); an ok record has none."""
    if outcome == "ok":
        return None
    return draw(st.sampled_from((None, *ERROR_CLASSES[:3], ERROR_CLASSES[-1])))


@st.composite
def message_records(
    draw: Callable[..., Any], stream: str, mid: str, counter: list[int]
) -> list[Record]:
    """The records of one message id on one stream: a few produces and consumes."""
    out = []
    for _ in range(draw(st.integers(0, 2))):
        outcome = draw(st.sampled_from(("ok", "ok", "ok", "error")))
        out.append(Record(
            stream, "produce", mid, T + draw(st.sampled_from(PRODUCE_OFFSETS)), "",
            draw(st.sampled_from((1, 1, 2))), outcome,
            record_id=_record_id(draw, counter), error=_error(draw, outcome),
        ))
    for _ in range(draw(st.integers(0 if out else 1, 4))):
        outcome = draw(st.sampled_from(("ok", "ok", "ok", "error", "dead_letter")))
        out.append(Record(
            stream, "consume", mid, T + draw(st.sampled_from(OFFSETS)),
            draw(st.sampled_from(GROUPS)),
            draw(st.sampled_from((1, 1, 1, 2, 3))), outcome,
            record_id=_record_id(draw, counter), error=_error(draw, outcome),
        ))
    return out


@st.composite
def histories(draw: Callable[..., Any]) -> History:
    counter = [0]
    keys = draw(st.lists(
        st.tuples(st.sampled_from(STREAMS), st.sampled_from(IDS)),
        min_size=1, max_size=6, unique=True,
    ))
    records: list[Record] = []
    for stream, mid in keys:
        records.extend(draw(message_records(stream, mid, counter)))
    records = list(draw(st.permutations(records)))
    # Resends: exact copies (with or without record_id), and copies that keep the
    # record_id but changed a field (the same record by the contract).
    for _ in range(draw(st.integers(0, 4))):
        original = draw(st.sampled_from(records))
        copy = original
        if original.record_id is not None and draw(st.booleans()):
            copy = original._replace(ts=original.ts + 1.0, attempt=original.attempt + 1)
        records.insert(draw(st.integers(0, len(records))), copy)
    stream_deadlines = draw(st.sampled_from(({}, {"s2": 60.0})))
    expected_groups = draw(
        st.sampled_from(({}, {"s1": ("cfg",)}, {"s2": ("g1",)}, {"s1": ("g2", "cfg")}))
    )
    config = ReconcileConfig(stream_deadlines=stream_deadlines, expected_groups=expected_groups)
    return History(records, config)


def _settings(store: Engine) -> settings:
    return settings(
        max_examples=examples(30, 60) if store.dialect.name == "sqlite" else examples(12, 25),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # A failure shrinks once, to one minimal history, and skips the explain
        # phase: both keep a failing run within minutes on a busy machine.
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )


def _oracle(history: History, records: list[Record] | None = None) -> Any:
    c = history.config
    return oracle(
        history.records if records is None else records,
        deadline=c.deadline,
        stream_deadlines=c.stream_deadlines,
        expected_groups=c.expected_groups,
    )


def _assert_same_figures(got: Figures, want: Figures) -> None:
    """Two stores' figures are the same: counts exact, latency figures to 1e-6."""
    assert set(got) == set(want)
    for key in want:
        a, b = got[key], want[key]
        for name in a:
            if name.startswith("latency_") and a[name] is not None and b[name] is not None:
                assert a[name] == pytest.approx(b[name], abs=1e-6), (key, name)
            else:
                assert a[name] == b[name], (key, name)


def test_one_shot_matches_the_oracle(store: Engine) -> None:
    @_settings(store)
    @given(history=histories(), n_batches=st.integers(1, 3))
    def check(history: History, n_batches: int) -> None:
        note(history.describe())
        wipe(store)
        # All records in before the one pass, in one to three requests: in any
        # order within one, each id's in the order of their ts across them (as
        # shims send them), since an id is judged delivered right after the
        # request that brings its in-time delivery.
        size = -(-len(history.records) // n_batches)
        requests = in_time_order_across(
            [history.records[i : i + size] for i in range(0, len(history.records), size)]
        )
        for request in requests:
            ingest(store, request)
        records = [r for request in requests for r in request]
        reconcile(store, history.config, history.final_now())
        want = _oracle(history, records)  # of a record_id sent twice, the first counts
        assert_figures(figures(store), want)
        assert_discrepancies(store, want)
        assert errors(store) == error_counts(records)

    check()


def _passes(history: History, offsets: list[float]) -> list[float]:
    """Increasing pass times: the drawn ones, then one past every deadline + settle."""
    times = [T + p for p in sorted(offsets)]
    return [*times, max([history.final_now(), *(t + 1 for t in times)])]


def _id_deadline(history: History) -> dict[tuple[str, str], float]:
    """The earliest time any group's row of an id could be classified, over all its records.

    An id's deadline counts from its first produce, or for an unproduced id from
    the group's first consume: the earliest ts of the id bounds both from below.
    """
    c = history.config
    earliest: dict[tuple[str, str], float] = {}
    for r in history.records:
        key = (r.stream, r.message_id)
        earliest[key] = min(earliest.get(key, r.ts), r.ts)
    return {
        key: ts + c.deadline_of(key[0]) + c.settle for key, ts in earliest.items()
    }


def test_incremental_matches_one_shot(store: Engine) -> None:
    @_settings(store)
    @given(
        history=histories(),
        pass_offsets=st.lists(st.sampled_from(PASS_OFFSETS), max_size=4, unique=True),
        budget=st.sampled_from((1, 3, DEFAULT_BUDGET)),
        data=st.data(),
    )
    def check(
        history: History, pass_offsets: list[float], budget: int, data: st.DataObject
    ) -> None:
        config = ReconcileConfig(
            stream_deadlines=history.config.stream_deadlines,
            expected_groups=history.config.expected_groups,
            budget=budget,
        )
        history = History(history.records, config)
        passes = _passes(history, pass_offsets)
        due = _id_deadline(history)
        # Batch j is ingested just before pass j; a record may wait for batch j
        # only while every pass before it is earlier than its id's deadline + settle,
        # and the records of one id arrive in the order of their ts (as shims send
        # them): then no verdict, early ones included, comes before a record of its id.
        batches: list[list[Record]] = [[] for _ in passes]
        earliest: dict[tuple[str, str], int] = {}
        for r in sorted(history.records, key=lambda r: r.ts):
            key = (r.stream, r.message_id)
            allowed = sum(1 for now in passes[:-1] if now < due[key])
            lowest = min(earliest.get(key, 0), allowed)
            j = data.draw(st.integers(lowest, allowed), label=f"batch of {_short(r)}")
            earliest[key] = j
            batches[j].append(r)
        arrival = [r for batch in batches for r in batch]
        history.notes.append(f"passes at {[p - T for p in passes]}, budget {budget}")
        history.notes.extend(f"batch {j}: {len(b)} records" for j, b in enumerate(batches))
        note(history.describe())

        wipe(store)
        previous: Figures = {}
        for batch, now in zip(batches, passes, strict=True):
            if batch:
                ingest(store, batch)
            reconcile(store, config, now)
            current = figures(store)
            for key, row in previous.items():  # counters never go down
                for name in (*COUNT_NAMES, "latency_count"):
                    assert current[key][name] >= row[name], (key, name, now - T)
            previous = current
        incremental = previous
        incremental_ids = {k: discrepancy_ids(store, k) for k in ID_KINDS}
        incremental_errors = errors(store)

        wipe(store)
        ingest(store, arrival)
        reconcile(store, config, passes[-1])
        _assert_same_figures(incremental, figures(store))
        assert incremental_ids == {k: discrepancy_ids(store, k) for k in ID_KINDS}

        # and both are the oracle's (records kept in arrival order for resends)
        want = _oracle(history, arrival)
        assert_figures(incremental, want)
        assert incremental_errors == errors(store) == error_counts(arrival)

    check()


def _assert_consistent(store: Engine, got: Figures) -> None:
    """What holds at any moment, whatever the order records arrive in."""
    reports = {k: discrepancy_ids(store, k) for k in ID_KINDS}
    with store.connect() as conn:
        duplicates = {
            (r["stream"], r["group"], r["message_id"]): r["duplicates"]
            for r in read_discrepancies(conn, kind="duplicated", limit=10_000)
        }
    for key, row in got.items():
        assert row["delivered"] + row["lost"] == row["produced"], key
        assert row["late"] <= row["lost"], key
        assert row["latency_count"] == row["delivered"] + row["late"], key
        assert row["dead_lettered"] <= row["produced"], key
        assert row["duplicated"] <= row["attempts"], key
        for kind in ("lost", "late", "unexpected", "recovered", "dead_lettered"):
            assert len(reports[kind].get(key, set())) == row[kind], (key, kind)
        dups = sum(n for (s, g, _), n in duplicates.items() if (s, g) == key)
        assert dups == row["duplicated"], key


def test_any_arrival_order_only_adds(store: Engine) -> None:
    """Records may arrive after their id was classified (rule 3): counters never go
    down, the figures stay consistent with each other and with the reports, and a
    resend of everything changes nothing."""

    @_settings(store)
    @given(
        history=histories(),
        pass_offsets=st.lists(st.sampled_from(PASS_OFFSETS), max_size=4, unique=True),
        data=st.data(),
    )
    def check(history: History, pass_offsets: list[float], data: st.DataObject) -> None:
        # Remember every judged id for the whole history: what is checked here is
        # what a record after its verdict does, not when the engine forgets an id.
        history = History(history.records, replace(history.config, remember=1e9))
        passes = _passes(history, pass_offsets)
        batches: list[list[Record]] = [[] for _ in passes]
        for r in history.records:
            batches[data.draw(st.integers(0, len(passes) - 1), label=_short(r))].append(r)
        history.notes.append(f"passes at {[p - T for p in passes]}")
        note(history.describe())

        wipe(store)
        previous: Figures = {}
        for batch, now in zip(batches, passes, strict=True):
            if batch:
                ingest(store, batch)
            reconcile(store, history.config, now)
            current = figures(store)
            for key, row in previous.items():
                for name in (*COUNT_NAMES, "latency_count"):
                    assert current[key][name] >= row[name], (key, name, now - T)
            _assert_consistent(store, current)
            previous = current

        assert errors(store) == error_counts(history.records)
        before = repeats(store)
        everything = [r for batch in batches for r in batch]
        ingest(store, everything)
        reconcile(store, history.config, passes[-1] + 1000)
        assert repeats(store) - before == len(everything)
        _assert_same_figures(figures(store), previous)
        assert errors(store) == error_counts(history.records)  # a resend counts nothing

    check()
