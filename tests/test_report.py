"""The terminal report's words: its legend (one definition, shown by
`msgtally report --help` and docs/quickstart.md) and its durations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from msgtally.slis.read.figures import SLI
from msgtally.slis.read.report import COLUMNS, duration, legend, render_table

REPO = Path(__file__).resolve().parents[1]


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
