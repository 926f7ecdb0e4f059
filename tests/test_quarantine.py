"""Quarantine: a log row whose body the machine rejects is set aside with the
reason, in the tick's transaction, and the engine goes on with the rows after
it; the collector stays ready; `msgtally quarantine retry` puts it back once
it is applicable, and its records count exactly once. On SQLite and PostgreSQL,
through a real collector."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert, select, update

from msgtally.cli import main
from msgtally.ingest.intake import logbody
from msgtally.ingest.intake.schema import parse_batch
from msgtally.ingest.shim.wire import record_to_json
from msgtally.oracle import Record, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.store.db import write_tx
from msgtally.store.tables import log, log_pending, quarantine
from tests.conftest import LiveCollector
from tests.harness import assert_discrepancies, assert_figures, consume, figures, ingest, produce

CONFIG = ReconcileConfig(settle=0.2, remember=0)

A = [produce("s", "a1", 0), consume("s", "a1", "g", 1), produce("s", "a2", 0),
     consume("s", "a3", "g", 2)]  # fmt: skip
C = [produce("s", "c1", 0), consume("s", "c1", "g", 1), consume("s", "c1", "g", 2),
     produce("s", "c2", 0, outcome="error"), consume("s", "c2", "g", 3)]  # fmt: skip
B = [produce("s", "b1", 0), consume("s", "b1", "g", 400), produce("t", "b2", 0),
     consume("t", "b2", "h", 1)]  # fmt: skip


def encoded(records: list[Record]) -> bytes:
    return logbody.encode(parse_batch([record_to_json(r) for r in records]), None)


def plant(store: Engine, body: bytes, records: int) -> int:
    """A log row as ingest writes one, with a body of our choosing."""
    with write_tx(store) as conn:
        at = time.time()
        row = conn.execute(
            insert(log).values(received_at=at, n=records, body=body).returning(log.c.id)
        ).one()
        conn.execute(insert(log_pending).values(id=row[0], received_at=at, n=records))
    return int(row[0])


def cli(capsys: pytest.CaptureFixture[str], store: Engine, *args: str) -> tuple[int, str]:
    url = store.url.render_as_string(hide_password=False)
    code = main([*args, "--db", url])
    out = capsys.readouterr()
    return code, out.out + out.err


def wait_for(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def gauge(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "msgtally_reconcile_quarantined_rows":
            return float(family.samples[0].value)
    raise AssertionError("no msgtally_reconcile_quarantined_rows on /metrics")


def judged(store: Engine, want: dict[tuple[str, str], Any]) -> bool:
    """Every id judged: the counts of every (stream, group) are the oracle's (a
    verdict at the deadline comes settle after its receipt, in a later tick)."""
    got = figures(store)
    return all(
        key in got and all(got[key][k] == v for k, v in outcome.counts.items())
        for key, outcome in want.items()
    )


def backlog(store: Engine) -> int:
    with store.connect() as conn:
        return len(conn.execute(select(log_pending.c.id)).all())


def test_a_rejected_row_is_set_aside_and_counted_once_after_a_retry(
    store: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = msgspec.msgpack.decode(encoded(C))
    broken[2][3]["ts"] = "soon"  # record 3 of the row: what no engine can apply
    ingest(store, A)
    bad = plant(store, msgspec.msgpack.encode(broken), len(C))
    ingest(store, B)
    with LiveCollector(store, CONFIG, reconcile_interval=0.05) as live:
        wait_for("the rows after it", lambda: backlog(store) == 0)
        want = oracle([*A, *B])
        wait_for("every verdict", lambda: judged(store, want))
        ready = httpx.get(f"{live.url}/readyz")
        assert ready.status_code == 200, ready.text
        assert gauge(live.url) == 1
        with store.connect() as conn:
            (row,) = conn.execute(select(quarantine)).all()
        assert row.id == bad and row.n == len(C) and row.quarantined_at >= row.received_at
        assert row.reason == "log body: record 3: field 'ts' is not a number"
        assert_figures(figures(store), want)
        assert_discrepancies(store, want)

        code, out = cli(capsys, store, "quarantine", "list", "--json")
        assert code == 0
        (listed,) = json.loads(out)
        assert (listed["id"], listed["records"]) == (bad, len(C))
        assert listed["reason"] == row.reason
        code, out = cli(capsys, store, "quarantine", "list")
        assert str(bad) in out and "field 'ts' is not a number" in out
        code, out = cli(capsys, store, "report")
        said = "1 log row in quarantine, not counted (the engine rejects their bodies)"
        assert f"{said}: {bad}" in out

        # Still rejected: set aside again, with the reason.
        assert cli(capsys, store, "quarantine", "retry", str(bad))[0] == 0
        wait_for("the row set aside again", lambda: backlog(store) == 0 and gauge(live.url) == 1)
        assert_figures(figures(store), want)

        # Repaired, then retried: applied, once.
        with write_tx(store) as conn:
            conn.execute(update(log).where(log.c.id == bad).values(body=encoded(C)))
        code, out = cli(capsys, store, "quarantine", "retry", "--all")
        assert code == 0 and f"back in the engine's queue: {bad}" in out
        want = oracle([*A, *B, *C])
        wait_for("the retried row", lambda: gauge(live.url) == 0 and backlog(store) == 0)
        wait_for("its verdicts", lambda: judged(store, want))
        assert_figures(figures(store), want)
        assert_discrepancies(store, want)
        assert httpx.get(f"{live.url}/readyz").status_code == 200
        code, out = cli(capsys, store, "quarantine", "retry", str(bad))
        assert code == 1 and f"not in quarantine: {bad}" in out
        code, out = cli(capsys, store, "report")
        assert "quarantine" not in out


def test_quarantine_commands_say_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["quarantine", "--help"], ["quarantine", "retry", "--help"]):
        with pytest.raises(SystemExit):
            main(args)
        assert "quarantine" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["quarantine", "list", "--help"])
    assert "--json" in capsys.readouterr().out


def test_retry_needs_ids_or_all(store: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, store, "quarantine", "retry")
    assert code == 1 and "give the log ids to retry, or --all" in out
    code, out = cli(capsys, store, "quarantine", "list")
    assert code == 0 and "no log rows in quarantine" in out


