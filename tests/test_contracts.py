"""Delivery contracts on the read side: declared semantics, breaches, observed semantics.

Histories with known breaches go through a real collector (HTTP in, the
engine, the store, HTTP out) and through `msgtally report`; every figure is
checked exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from msgtally.ingest.shim.wire import record_to_json
from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.spec.load import load_spec
from msgtally.slis.spec.semantics import (
    FORBIDS,
    Breach,
    Semantics,
    breaches,
    observed_semantics,
)
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.harness import consume, ingest, produce, run

SPEC = """\
version: msgtally/v1
service: payments
contracts:
  - {stream: payments, semantics: exactly-once}
  - {stream: ledger, semantics: at-least-once}
  - {stream: ledger, group: notifier, semantics: at-most-once}
  - {stream: clicks, semantics: at-most-once}
"""


@pytest.mark.parametrize(
    ("lost", "duplicated", "observed"),
    [
        (0, 0, "exactly-once"),
        (0, 3, "at-least-once"),
        (2, 0, "at-most-once"),
        (1, 1, "none"),
    ],
)
def test_observed_semantics_is_the_strongest_kept(
    lost: int, duplicated: int, observed: str
) -> None:
    counts = {"produced": 10, "lost": lost, "duplicated": duplicated}
    assert observed_semantics(counts) == observed
    kept = [s for s in Semantics if not any(breaches(s, counts).values())]
    # what a stream keeps is what the observed semantics and anything weaker keep
    assert all(set(FORBIDS[Semantics(observed)]) >= set(FORBIDS[s]) for s in kept) or (
        observed == "none" and not kept
    )


def test_no_traffic_is_no_observed_semantics() -> None:
    assert observed_semantics({"produced": 0, "lost": 0, "duplicated": 0}) is None


def test_breaches_are_what_the_contract_forbids() -> None:
    counts = {"produced": 5, "lost": 2, "duplicated": 3}
    assert breaches(Semantics.EXACTLY_ONCE, counts) == {Breach.LOSS: 2, Breach.DUPLICATE: 3}
    assert breaches(Semantics.AT_LEAST_ONCE, counts) == {Breach.LOSS: 2}
    assert breaches(Semantics.AT_MOST_ONCE, counts) == {Breach.DUPLICATE: 3}


def history() -> list[object]:
    """Known breaches, and what each contract allows."""
    records = []
    # payments, exactly-once: one duplicate delivery to billing, nothing lost.
    for i in range(4):
        records += [produce("payments", f"p{i}", i), consume("payments", f"p{i}", "billing", i + 1)]
    records.append(consume("payments", "p2", "billing", 9))
    # ledger, at-least-once for archive: 2 duplicates (allowed), 1 loss (a breach).
    for i in range(5):
        records.append(produce("ledger", f"l{i}", i))
        if i != 4:
            records.append(consume("ledger", f"l{i}", "archive", i + 1))
        records.append(consume("ledger", f"l{i}", "notifier", i + 2))
    records += [consume("ledger", "l0", "archive", 30), consume("ledger", "l1", "archive", 31)]
    # ledger, at-most-once for notifier: one more duplicate (a breach), no loss.
    records.append(consume("ledger", "l3", "notifier", 40))
    # clicks, at-most-once: 2 of 6 lost (allowed), no duplicate.
    for i in range(6):
        records.append(produce("clicks", f"c{i}", i))
        if i % 3:
            records.append(consume("clicks", f"c{i}", "stats", i + 1))
    return records


# (stream, group) -> (contract, breaches, observed)
EXPECTED = {
    ("payments", "billing"): ("exactly-once", {"loss": 0, "duplicate": 1}, "at-least-once"),
    ("ledger", "archive"): ("at-least-once", {"loss": 1}, "none"),  # and 2 duplicates
    ("ledger", "notifier"): ("at-most-once", {"duplicate": 1}, "at-least-once"),
    ("clicks", "stats"): ("at-most-once", {"duplicate": 0}, "at-most-once"),
}


def test_the_collector_reports_contracts_breaches_and_observed_semantics(store: Engine) -> None:
    spec = load_spec(SPEC)
    with LiveCollector(store, ReconcileConfig(), spec=spec) as live:
        body = [record_to_json(r) for r in history()]  # type: ignore[arg-type]
        assert httpx.post(f"{live.url}/v1/records", json=body).status_code == 200
        run(store, ReconcileConfig(), 1_000)  # every deadline (300 s) passed
        rows = httpx.get(f"{live.url}/v1/slis").json()
    got = {
        (r["stream"], r["group"]): (r["contract"], r["contract_breaches"], r["observed_semantics"])
        for r in rows
    }
    assert got == EXPECTED


def test_report_shows_the_contracts_of_a_spec(tmp_path: Path) -> None:
    spec, db = tmp_path / "payments.yml", tmp_path / "store.db"
    spec.write_text(SPEC)
    store = open_store(str(db))
    ingest(store, history())  # type: ignore[arg-type]
    run(store, ReconcileConfig(), 1_000)
    store.dispose()
    cli = [sys.executable, "-m", "msgtally.cli", "report", "--db", str(db)]
    out = subprocess.run([*cli, "--json", "--spec", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    got = {
        (r["stream"], r["group"]): (r["contract"], r["contract_breaches"], r["observed_semantics"])
        for r in rows
    }
    assert got == EXPECTED
    table = subprocess.run([*cli, "--spec", str(spec)], capture_output=True, text=True).stdout
    cells = {tuple(line.split()[:2]): line.split()[-3:] for line in table.splitlines()[2:]}
    assert cells[("payments", "billing")] == ["at-least-once", "exactly-once", "BREACHED"]
    assert cells[("clicks", "stats")][-2:] == ["at-most-once", "at-most-once"]
    # without a spec: no contract, the observed semantics all the same
    plain = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True).stdout)
    assert {r["contract"] for r in plain} == {None}
    assert {(r["stream"], r["group"]): r["observed_semantics"] for r in plain} == {
        k: v[2] for k, v in EXPECTED.items()
    }
