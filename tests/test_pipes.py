"""A command whose reader goes away (`msgtally report --json | head -1`) stops
quietly, exit code 141 (docs/operations.md), instead of a BrokenPipeError
traceback. Real subprocesses, real pipes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from msgtally.cli import EXIT_STDOUT_CLOSED
from msgtally.ingest.intake.schema import Batch, parse_batch
from msgtally.ingest.intake.writer import write_batch
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.store.db import open_store

T0 = 1_700_000_000.0
SPEC = Path(__file__).resolve().parents[1] / "examples" / "checkout.yml"
STREAMS = 120  # a report larger than a pipe's buffer (64 KiB)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with figures for STREAMS streams."""
    path = str(tmp_path_factory.mktemp("pipes") / "s.db")
    store = open_store(path)
    records = [
        {"stream": f"stream-{s:03d}", "kind": kind, "message_id": f"m{i}", "ts": T0 + i,
         **({"group": "billing"} if kind == "consume" else {})}
        for s in range(STREAMS) for i in range(3) for kind in ("produce", "consume")
    ]  # fmt: skip
    write_batch(store, Batch(parse_batch(records), [], None))
    reconcile(store, ReconcileConfig(), now=T0 + 1000)
    store.dispose()
    return path


def _no_reader(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `msgtally ARGS` with stdout a pipe whose reading end is closed
    before the command starts: its first write to stdout finds no reader."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "msgtally.cli", *args],
            cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "args",
    [
        ["report", "--json"],
        ["report", "--help"],
        ["--version"],
        ["alerts", str(SPEC)],
    ],
    ids=" ".join,
)
def test_every_printing_command_stops_quietly_without_a_reader(
    db: str, tmp_path: Path, args: list[str]
) -> None:
    if args[0] == "report" and "--help" not in args:
        args = [*args, "--db", db]
    done = _no_reader(args, tmp_path)
    assert done.stderr == ""
    assert done.returncode == EXIT_STDOUT_CLOSED == 141


def test_report_json_into_head(db: str, tmp_path: Path) -> None:
    """The pipeline as a user types it: `head -1` reads a line and leaves."""
    command = shlex.join([sys.executable, "-m", "msgtally.cli", "report", "--json", "--db", db])
    done = subprocess.run(
        ["bash", "-c", f'{command} | head -1; echo "exit ${{PIPESTATUS[0]}}" >&2'],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout == "[\n"
    assert done.stderr == f"exit {EXIT_STDOUT_CLOSED}\n"  # no traceback, nothing else


def test_a_reader_that_stays_gets_everything(db: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "msgtally.cli", "report", "--db", db],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("\n\n")[0]  # the notes under it follow a blank line
    assert len(table.splitlines()) == STREAMS + 2  # header, rule, a row per stream
