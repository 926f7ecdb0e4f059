"""Every limit of the engine is enforced at the collector's door: past one, a
record is refused (422, naming the limit), the figures of everything else stay
exact, and the engine never meets a record it cannot apply."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import Engine

from msgtally import record
from msgtally.ingest.intake import limits, logbody
from msgtally.ingest.intake.schema import parse_batch
from msgtally.reconcile import _machine
from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.read.query import read_slis
from tests.conftest import LiveCollector
from tests.harness import T

LIMIT = limits.MAX_GROUPS_PER_STREAM


def test_the_engine_and_the_door_hold_the_same_numbers() -> None:
    assert _machine.MAX_GROUPS_PER_STREAM == limits.MAX_GROUPS_PER_STREAM
    # A group's index is 16 bits; every group is one of the store's names.
    assert _machine.MAX_GROUPS == limits.MAX_SERIES


def test_the_engine_refuses_a_group_past_its_stream_limit_and_stays_whole() -> None:
    """The engine's own guard (the door keeps records from reaching it): an
    error naming the limit, never a write past an entry's slots."""
    core = _machine.Machine(1.0, 0.0, 0.0, [0.1])
    body = logbody.encode(parse_batch([
        {"stream": "s", "kind": "produce", "message_id": f"m{i}", "ts": T} for i in range(3)
    ]), None)  # fmt: skip
    assert core.apply(body, T) == 3  # ids in flight while the groups come
    for i in range(LIMIT):
        assert core.expect("s", f"g{i}")
    with pytest.raises(_machine.EngineError, match=f"{LIMIT} consumer groups, the limit"):
        core.expect("s", "one-too-many")
    core.advance(T + 10, T + 10)
    pairs, _rows, _missing, _errors = core.drain()
    lost = {group: counts["lost"] for _stream, group, counts, *_ in pairs}
    assert lost == {f"g{i}": 3 for i in range(LIMIT)}


def _post(url: str, records: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(f"{url}/v1/records", json=records, timeout=30)


@pytest.mark.postgres
def test_a_group_past_the_stream_limit_is_refused_and_the_rest_stays_exact(
    store: Engine,
) -> None:
    now = time.time()
    config = ReconcileConfig(deadline=0.5, settle=0.2)
    with LiveCollector(
        store, config, max_series=limits.MAX_SERIES, reconcile_interval=0.05
    ) as live:
        groups = [
            {"stream": "s", "kind": "consume", "message_id": "c", "ts": now, "group": f"g{i}"}
            for i in range(LIMIT)
        ]
        assert _post(live.url, groups).status_code == 200
        one_more = [
            {"stream": "t", "kind": "produce", "message_id": "t1", "ts": now},
            {"stream": "s", "kind": "consume", "message_id": "d", "ts": now, "group": "g0"},
            {"stream": "s", "kind": "consume", "message_id": "d", "ts": now, "group": "extra"},
        ]
        resp = _post(live.url, one_more)
        assert resp.status_code == 422
        detail = resp.json()["detail"]
        assert detail["field"] == "records[2].group"
        assert f"limit of {LIMIT} groups per stream" in detail["reason"]
        # Nothing of the refused batch was stored; names the stream knows still flow.
        ok = [
            {"stream": "s", "kind": "produce", "message_id": "p1", "ts": now},
            {"stream": "s", "kind": "consume", "message_id": "p1", "ts": now, "group": "g7"},
            {"stream": "t", "kind": "produce", "message_id": "t2", "ts": now},
            {"stream": "t", "kind": "consume", "message_id": "t2", "ts": now, "group": "a"},
        ]
        assert _post(live.url, ok).status_code == 200
        want_t = {"produced": 1, "delivered": 1, "lost": 0, "unexpected": 0}
        deadline = time.monotonic() + 60
        while True:
            with store.connect() as conn:
                slis = {(r.stream, r.group): r for r in read_slis(conn)}
            s_done = sum(r.lost for k, r in slis.items() if k[0] == "s") == LIMIT - 1
            if s_done and ("t", "a") in slis:
                break
            assert time.monotonic() < deadline, "the engine did not judge every group"
            time.sleep(0.2)
    assert {k: getattr(slis[("t", "a")], k) for k in want_t} == want_t
    assert slis[("s", "g7")].delivered == 1
    assert all(slis[("s", f"g{i}")].produced == 1 for i in range(LIMIT))
    assert all(slis[("s", f"g{i}")].unexpected == 1 for i in range(LIMIT))
    assert ("s", "extra") not in slis


# --- every size typed for its limit -----------------------------------------------------------


def test_the_machine_exports_each_limit_and_the_door_holds_the_text_ones() -> None:
    # Text past MAX_TEXT_BYTES is a body the machine rejects: the contract's
    # characters (at most 4 bytes each in UTF-8) always fit.
    contract = 4 * max(record.MAX_ID_LENGTH, record.MAX_TEXT_LENGTH)
    assert contract <= _machine.MAX_TEXT_BYTES
    # Capacities of memory, not of records: far past any machine's memory.
    assert _machine.MAX_IDS >= 2**31
    assert min(_machine.MAX_NAMES, _machine.MAX_KNOWN, _machine.MAX_SEQUENCES) >= 2**31


def _poison_bodies(n: int, per_body: int = 10_000) -> list[bytes]:
    """One id produced once and consumed `n` times: every delivery but the last fails."""
    import msgspec

    def rec(i: int) -> dict[str, object]:  # the last, ok, at T + 101: delivered in time
        outcome = "ok" if i == n - 1 else "error"
        return {"stream": "s", "kind": "consume", "message_id": "poison", "ts": T + 1 + i * 1e-4,
                "group": "g", "attempt": i + 1, "outcome": outcome}  # fmt: skip

    first = [{"stream": "s", "kind": "produce", "message_id": "poison", "ts": T}]
    bodies = []
    for start in range(0, n, per_body):
        records = [rec(i) for i in range(start, min(n, start + per_body))]
        bodies.append(msgspec.msgpack.encode((2, None, (first if start == 0 else []) + records)))
    return bodies


def test_a_million_deliveries_of_one_id_count_exactly_and_resends_are_recognised() -> None:
    """No limit on the records of one id: fingerprints past the first few move to
    a set of their own, so a resend of any of them is still a resend."""
    n = 1_000_000
    core = _machine.Machine(300.0, 10.0, 0.0, [0.1])
    bodies = _poison_bodies(n)
    for body in bodies:
        core.apply(body, T)
    core.apply(bodies[50], T)  # a shim resends a batch from the middle
    core.apply(bodies[-1], T)
    core.advance(T + 10_000, T + 10_000)
    (pair,), rows, _missing, _errors = core.drain()
    counts = pair[2]
    assert counts["attempts"] == n
    assert counts["consume_errors"] == n - 1
    assert (counts["produced"], counts["retried"], counts["delivered"]) == (1, 1, 1)
    assert [counts.get(k, 0) for k in ("lost", "late", "duplicated")] == [0, 0, 0]
    assert core.stats()["repeats"] == 2 * 10_000
    (row,) = rows
    assert (row[9], row[10], row[11]) == (n, 1, n)  # n, ok, max_attempt as the store keeps them


def test_a_million_deliveries_of_one_id_through_the_store(store: Engine) -> None:
    from msgtally.reconcile.engine import reconcile
    from msgtally.store.db import write_tx
    from msgtally.store.tables import log, log_pending
    from tests.harness import figures

    n = 1_000_000
    with write_tx(store) as conn:
        for body in _poison_bodies(n, 50_000):
            row = conn.execute(
                log.insert().values(received_at=T, n=0, body=body).returning(log.c.id)
            ).one()
            conn.execute(log_pending.insert().values(id=row[0], received_at=T, n=50_000))
    reconcile(store, ReconcileConfig(remember=0), T + 10_000)
    got = figures(store)[("s", "g")]
    assert (got["attempts"], got["consume_errors"], got["retried"]) == (n, n - 1, 1)
    assert (got["produced"], got["delivered"], got["lost"], got["duplicated"]) == (1, 1, 0, 0)
