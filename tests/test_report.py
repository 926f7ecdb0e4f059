"""The terminal report's words: its legend (one definition, shown by
`msgtally report --help` and docs/quickstart.md) and its durations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from msgtally.record import ERROR_CLASSES
from msgtally.slis.read.figures import SLI
from msgtally.slis.read.report import COLUMNS, duration, legend, render_table

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "0ms"), (0.0004, "<1ms"), (0.0015, "1.5ms"), (0.0123, "12ms"), (0.85, "850ms"),
        (0.9996, "1.0s"), (2.1, "2.1s"), (59.9, "59.9s"), (59.96, "1m00s"), (200, "3m20s"),
        (3599.4, "59m59s"), (3599.6, "1h00m"), (7500, "2h05m"), (100_000, "1d03h"),
    ],
)  # fmt: skip
def test_durations_in_units_a_person_reads(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_every_column_is_a_field_of_the_sli_row_and_has_a_meaning() -> None:
    counts = dict.fromkeys(SLI.__dataclass_fields__, 0)
    row = SLI(**{**counts, "stream": "s", "group": "g", "contract": None})  # type: ignore[arg-type]
    fields = set(row.to_json())
    for column in COLUMNS:
        assert column.field in fields, column
        assert column.meaning and column.title
    titles = [c.title for c in COLUMNS]
    assert len(set(titles)) == len(titles)
    assert render_table([]).startswith("no SLIs yet")


def test_report_help_shows_the_legend() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "msgtally.cli", "report", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert legend() in out
    for title in ("p.miss", "c.miss", "recov", "unexp", "errors", "attempts", "dlq"):
        assert f"\n  {title} " in out


def _demo_slis(tmp_path: Path) -> list[SLI]:
    """The demo's streams and faults (fewer ids), judged, with its contracts."""
    from msgtally.demo import CONTRACTS
    from msgtally.oracle import Record
    from msgtally.reconcile.config import ReconcileConfig
    from msgtally.reconcile.engine import reconcile
    from msgtally.simulate import FLOWS, simulate
    from msgtally.slis.read.figures import with_contracts
    from msgtally.slis.read.query import read_slis
    from msgtally.store.db import open_store
    from tests.harness import ingest

    store = open_store(f"sqlite:///{tmp_path / 'demo.db'}")
    records = simulate(1500, start=1_700_000_000.0, seed=7)
    ingest(store, [Record(**{"group": "", **r}) for r in records])
    config = ReconcileConfig(stream_deadlines={f.stream: f.deadline for f in FLOWS})
    reconcile(store, config, 1_700_000_000.0 + 3 * 3600)
    with store.connect() as conn:
        slis = with_contracts(read_slis(conn), CONTRACTS)
    store.dispose()
    return slis


def test_the_default_report_fits_100_columns_for_the_demo_s_streams(tmp_path: Path) -> None:
    slis = _demo_slis(tmp_path)
    narrow = render_table(slis, wide=False)
    pairs = {(s.stream, s.group) for s in slis}
    assert pairs >= {("orders", "billing"), ("telemetry", "analytics")}
    assert max(len(line) for line in narrow.splitlines()) <= 100, narrow
    assert "BREACHED" in narrow and "\x1b[" not in narrow  # payments breaks exactly-once
    header = narrow.splitlines()[0].split()
    assert header == ["stream", "group", "produced", "lost", "dup", "dlq", "success", "p99",
                      "observed", "contract"]  # fmt: skip
    wide = render_table(slis)
    assert wide.splitlines()[0].split() == [c.title for c in COLUMNS]  # --wide: every column
    # Colour, on a terminal: BREACHED in red, padded cells keep their width.
    coloured = render_table(slis, wide=False, colour=True)
    assert "\x1b[31;1m" in coloured and "BREACHED" in coloured
    plain = coloured.replace("\x1b[31;1m", "").replace("\x1b[33m", "").replace("\x1b[0m", "")
    assert plain == narrow


def test_report_since_a_window_and_no_colour_when_piped(tmp_path: Path) -> None:
    from msgtally.cli import main  # noqa: F401 (the command is run as a user runs it)

    _demo_slis(tmp_path)
    db = str(tmp_path / "demo.db")
    run = [sys.executable, "-m", "msgtally.cli", "report", "--db", db]
    piped = subprocess.run(run, capture_output=True, text=True, check=True, timeout=60).stdout
    assert "\x1b[" not in piped and "orders" in piped
    # The demo judged everything 3h after 2023-11-14: nothing in the last hour of today.
    recent = subprocess.run([*run, "--since", "1h"], capture_output=True, text=True, timeout=60)
    assert recent.returncode == 0 and recent.stdout.startswith("no SLIs yet"), recent
    bad = subprocess.run([*run, "--since", "soon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--since" in bad.stderr


def test_report_shows_failed_records_by_error_class(
    db_url: str, store: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """A known history of failures, classified and not: the section under the table
    and --json give each stream's failed sends and each group's failed deliveries by
    class, exactly (a resent request counted once), on both stores."""
    from msgtally.cli import main
    from msgtally.ingest.intake.schema import Batch, parse_batch
    from msgtally.ingest.intake.writer import write_batch
    from msgtally.reconcile.config import ReconcileConfig
    from msgtally.reconcile.engine import reconcile

    def rec(stream: str, mid: str, group: str = "", **extra: Any) -> dict[str, Any]:
        kind = {"kind": "consume", "group": group, "ts": T0 + 1} if group else {"kind": "produce"}
        return {"stream": stream, "message_id": mid, "ts": T0, **kind, **extra}

    records = [
        rec("orders", "m1", outcome="error", error="timeout"),
        rec("orders", "m1", attempt=2),
        rec("orders", "m2", outcome="error", error="unavailable"),  # never confirmed
        rec("orders", "m3"),
        rec("orders", "m4", outcome="error"),  # failed, not classified: in no class
        rec("orders", "m4", attempt=2),
        rec("orders", "m1", "billing", outcome="error", error="serialization"),
        rec("orders", "m1", "billing", attempt=2),
        rec("orders", "m3", "billing", outcome="error", error="auth"),
        rec("orders", "m3", "billing", attempt=2, outcome="error", error="auth"),
        rec("orders", "m3", "billing", attempt=3, outcome="dead_letter", error="poison"),
        rec("orders", "m1", "audit"),
        rec("orders", "m4", "audit", outcome="error", error="throttled", record_id="a4"),
        rec("payments", "p1"),
        rec("payments", "p1", "billing"),
    ]
    write_batch(store, Batch(parse_batch(records), [], None))
    # A resend of one record (the same record_id) is counted once.
    write_batch(store, Batch(parse_batch([records[-3]]), [], None))
    reconcile(store, ReconcileConfig(), T0 + 1000)

    assert main(["report", "--db", db_url]) == 0
    text = capsys.readouterr().out
    section = text[text.index("failed records by error class") :].strip().splitlines()
    assert section == [
        "failed records by error class (running totals; what each means: docs/adapters.md):",
        "  orders (produce): timeout 1, unavailable 1",
        "  orders / audit (consume): throttled 1",
        "  orders / billing (consume): auth 2, serialization 1, poison 1",
    ]
    assert main(["report", "--db", db_url, "--stream", "payments"]) == 0
    assert "failed records by error class: none" in capsys.readouterr().out

    assert main(["report", "--db", db_url, "--json"]) == 0
    rows = {(r["stream"], r["group"]): r["errors"] for r in json.loads(capsys.readouterr().out)}
    zero = dict.fromkeys(ERROR_CLASSES, 0)
    produce = {**zero, "timeout": 1, "unavailable": 1}
    assert rows == {
        ("orders", "audit"): {"produce": produce, "consume": {**zero, "throttled": 1}},
        ("orders", "billing"): {
            "produce": produce,
            "consume": {**zero, "auth": 2, "serialization": 1, "poison": 1},
        },
        ("payments", "billing"): {"produce": zero, "consume": zero},
    }
