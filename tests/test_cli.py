"""The `msgtally` command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgtally.ingest.intake.schema import Batch, parse_batch
from msgtally.ingest.intake.writer import write_batch
from msgtally.server import free_port
from msgtally.store.db import open_store

T0 = 1_700_000_000.0
SUBCOMMANDS = ("serve", "reconcile", "report", "demo")


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "msgtally.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"msgtally {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def test_every_command_has_help(tmp_path: Path) -> None:
    out = run("--help", cwd=tmp_path).stdout
    for name in SUBCOMMANDS:
        assert name in out
        sub = run(name, "--help", cwd=tmp_path).stdout
        assert f"usage: msgtally {name}" in sub
    assert "msgtally.db" in run("report", "--help", cwd=tmp_path).stdout


def _history(db: str) -> None:
    store = open_store(db)
    records: list[dict[str, Any]] = [
        {"stream": "orders", "kind": "produce", "message_id": f"m{i}", "ts": T0} for i in range(4)
    ]
    records += [
        {
            "stream": "orders",
            "kind": "consume",
            "message_id": f"m{i}",
            "group": "billing",
            "ts": T0 + 1 + i,
        }
        for i in range(3)
    ]
    write_batch(store, Batch(parse_batch(records), [], None))
    store.dispose()


def test_reconcile_now_then_report(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    _history(db)
    # Before the deadline, what was delivered in time shows; m3 waits for its deadline.
    run("reconcile", "--db", db, "--now", str(T0 + 100), cwd=tmp_path)
    (row,) = json.loads(run("report", "--db", db, "--json", cwd=tmp_path).stdout)
    assert (row["produced"], row["delivered"], row["lost"]) == (3, 3, 0)

    run("reconcile", "--db", db, "--now", str(T0 + 400), cwd=tmp_path)
    (row,) = json.loads(run("report", "--db", db, "--json", cwd=tmp_path).stdout)
    assert (row["stream"], row["group"]) == ("orders", "billing")
    assert (row["produced"], row["delivered"], row["lost"], row["duplicated"]) == (4, 3, 1, 0)
    assert row["delivery_success_ratio"] == 0.75
    assert row["loss_ratio"] == 0.25
    assert row["duplicate_ratio"] == 0.0
    assert row["retry_ratio"] == 0.0
    quantiles = (row["latency_p50"], row["latency_p90"], row["latency_p99"])
    assert quantiles == pytest.approx((2.0, 3.0, 3.0), rel=0.01)  # the sketch: 1 % relative
    for name in ("late", "recovered", "unexpected", "retried", "attempts", "dead_lettered"):
        assert name in row

    table = run("report", "--db", db, "--wide", cwd=tmp_path).stdout
    assert "orders" in table and "billing" in table and "75.00%" in table
    assert " 2.0s " in table and " 3.0s" in table  # p50, p99: in units a person reads
    narrow = run("report", "--db", db, cwd=tmp_path).stdout
    assert "75.00%" in narrow and " 2.0s " not in narrow and "3.0s" in narrow  # p99 only


def test_stream_deadline_flag(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    _history(db)
    # With a 1.5 s deadline only m0 (latency 1 s) is delivered in time.
    run(
        "reconcile",
        "--db",
        db,
        "--stream-deadline",
        "orders=1.5",
        "--now",
        str(T0 + 100),
        cwd=tmp_path,
    )
    (row,) = json.loads(run("report", "--db", db, "--json", cwd=tmp_path).stdout)
    assert (row["delivered"], row["lost"], row["late"]) == (1, 3, 2)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("reconcile", "--deadline", "-5"), 2, "--deadline: input should be greater than 0"),
        (("reconcile", "--stream-deadline", "orders"), 2, "'orders' is not NAME=VALUE"),
        (("reconcile", "--stream-deadline", "orders=0"), 2, "deadline of stream 'orders'"),
        (("serve", "--port", "99999"), 2, "--port: input should be less than or equal to 65535"),
        (("report",), 1, "no store at msgtally.db"),
        (("report", "--db", "nosuch/x.db"), 1, "no store at nosuch/x.db"),
        (("serve", "--db", "nosuch/x.db"), 1, "folder nosuch does not exist"),
        (("reconcile", "--db", "mysql://u@h/db"), 1, "'mysql' stores are not supported"),
        (
            ("report", "--db", "postgresql://postgres@127.0.0.1:1/x"),
            1,
            "cannot open the store postgresql+psycopg://postgres@127.0.0.1:1/x",
        ),
        (("check", "nosuch.yml"), 1, "cannot read nosuch.yml"),
    ],
)
def test_a_failure_is_one_line_naming_the_problem(
    tmp_path: Path, args: tuple[str, ...], code: int, says: str
) -> None:
    proc = run(*args, cwd=tmp_path, check=False)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), proc.stderr
    assert says in lines[-1]
    assert lines[-1].startswith(f"msgtally {args[0]}")
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created on the way


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = run("-v", "report", "--db", "postgresql://postgres@127.0.0.1:1/x", cwd=tmp_path,
               check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("msgtally report: cannot open")


def test_report_never_creates_a_store_and_names_unknown_filters(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    _history(db)
    run("reconcile", "--db", db, "--now", str(T0 + 400), cwd=tmp_path)
    nosuch = run("report", "--db", db, "--stream", "nosuch", cwd=tmp_path, check=False)
    assert nosuch.returncode == 1
    assert "no figures for stream 'nosuch' (streams with figures: orders)" in nosuch.stderr
    nogroup = run("report", "--db", db, "--group", "nog", cwd=tmp_path, check=False)
    assert nogroup.returncode == 1
    assert "no figures for group 'nog' (groups: billing)" in nogroup.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["s.db"]


def test_version(tmp_path: Path) -> None:
    from msgtally import __version__

    assert run("--version", cwd=tmp_path).stdout.strip() == f"msgtally {__version__}"


def test_a_busy_port_is_an_error_before_anything_listens(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run("serve", "--db", str(tmp_path / "s.db"), "--port", str(port), cwd=tmp_path,
                   check=False)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"msgtally serve: cannot listen on 127.0.0.1:{port}: " \
        "Address already in use"  # fmt: skip


def test_commands_that_write_files_say_what_they_wrote(tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parents[1] / "examples" / "checkout.yml"
    rules = run("alerts", str(spec), "-o", "rules.yml", "--tests", "t", cwd=tmp_path)
    assert rules.stdout == ""
    assert "wrote rules.yml (" in rules.stderr and "wrote t (" in rules.stderr
    boards = run("dashboards", str(spec), "-o", "boards", cwd=tmp_path)
    assert "wrote boards/executive.json (" in boards.stderr


def test_serve_ingests_and_reconciles(tmp_path: Path) -> None:
    port = free_port()
    db = str(tmp_path / "served.db")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "msgtally.cli",
            "serve",
            "--db",
            db,
            "--port",
            str(port),
            "--interval",
            "0.2",
            "--settle",
            "0",
            "--deadline",
            "1",
            "--otlp-grpc-port",
            "0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        now = time.time() - 5  # already past its 1 s deadline
        body = [
            {"stream": "s", "kind": "produce", "message_id": "a", "ts": now},
            {"stream": "s", "kind": "produce", "message_id": "b", "ts": now},
            {"stream": "s", "kind": "consume", "message_id": "a", "group": "g", "ts": now + 0.5},
        ]
        assert httpx.post(f"{url}/v1/records", json=body).status_code == 200
        for _ in range(100):
            slis = httpx.get(f"{url}/v1/slis").json()
            if slis:
                break
            time.sleep(0.1)
        assert [(s["produced"], s["delivered"], s["lost"]) for s in slis] == [(2, 1, 1)]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_demo_measures_exactly_what_it_injected(tmp_path: Path) -> None:
    proc = run("demo", "--ids", "3000", "--seed", "11", cwd=tmp_path)
    assert "MISMATCH" not in proc.stdout
    assert proc.stdout.count(": match") == 4
    # payments duplicates, so breaks its exactly-once; telemetry never does: at-most-once kept
    rows = {tuple(line.split()[:2]): line.split() for line in proc.stdout.splitlines()}
    assert rows[("payments", "ledger")][-2:] == ["exactly-once", "BREACHED"]
    assert rows[("telemetry", "analytics")][-2:] == ["at-most-once", "at-most-once"]
    assert "msgtally serve --db msgtally-demo.db" in proc.stdout
    assert (tmp_path / "msgtally-demo.db").exists()
    # Run again: the demo recreates its own file.
    run("demo", "--ids", "500", cwd=tmp_path)
    # It refuses to clobber a store it did not make.
    other = tmp_path / "mine.db"
    other.write_bytes(b"")
    os.chmod(other, 0o644)
    refused = run("demo", "--db", str(other), cwd=tmp_path, check=False)
    assert refused.returncode != 0
    assert "was not made by the demo" in refused.stderr
