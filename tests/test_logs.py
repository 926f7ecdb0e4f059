"""The collector's logs as an operator gets them: `msgtally serve` as a real
subprocess; the access log off by default, on with --access-log; text or one
JSON object a line; the level from --log-level or MSGTALLY_LOG_LEVEL."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgtally import cli, logs
from msgtally.server import free_port
from msgtally.settings import SettingsError, settings_from_args

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REQUESTS = 12


class Served:
    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc
        self.lines: list[str] = []


@contextmanager
def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """`msgtally serve` until the block ends; then its stderr lines, in `lines`."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "msgtally.cli", "serve", "--db", str(tmp_path / "s.db"),
             "--port", str(port), "--no-otlp-grpc", *args],
            cwd=tmp_path, stderr=out, stdout=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    served = Served(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                httpx.get(f"{served.url}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the collector did not start"
                time.sleep(0.05)
        yield served
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        served.lines = log_path.read_text().splitlines()
    assert proc.returncode == 0, "\n".join(served.lines)


def traffic(url: str) -> None:
    """REQUESTS requests of every sort: records, scrapes, reads, an error."""
    record = {"stream": "s", "kind": "produce", "message_id": "m1", "ts": time.time()}
    for i in range(REQUESTS // 4):
        assert httpx.post(f"{url}/v1/records", json=[record]).status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/v1/slis", params={"stream": f"s{i}"}).status_code == 200
        assert httpx.get(f"{url}/nowhere").status_code == 404


def test_no_access_log_by_default(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        traffic(served.url)
        # `systemctl reload` without a token file: said, and the collector goes on.
        served.proc.send_signal(signal.SIGHUP)
        traffic(served.url)
    lines = served.lines
    assert sum(" INFO msgtally: SIGHUP: no token file to read again" in line
               for line in lines) == 1  # fmt: skip
    assert any(" INFO msgtally: msgtally collector on " in line for line in lines)
    assert any(" INFO uvicorn.error: Application startup complete." in line for line in lines)
    assert not [line for line in lines if "/v1/records" in line or "/metrics" in line]
    assert not [line for line in lines if "msgtally.access" in line or "uvicorn.access" in line]
    # Text lines: an RFC 3339 UTC time, the level, the logger.
    for line in lines:
        time_, level, logger, *_ = line.split(" ", 3)
        assert RFC3339_UTC.match(time_), line
        assert level in ("DEBUG", "INFO", "WARNING", "ERROR"), line
        assert logger.endswith(":"), line


def test_access_log_as_json_lines(tmp_path: Path) -> None:
    with serve(tmp_path, "--access-log", "--log-format", "json", "--log-level", "DEBUG") as served:
        traffic(served.url)
    records = [json.loads(line) for line in served.lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert RFC3339_UTC.match(record["time"]), record
    access = [r for r in records if r["logger"] == "msgtally.access"]
    # Every request, the start-up probes included, and nothing else.
    probes = [r for r in access if r["path"] == "/healthz"]
    assert len(access) == REQUESTS + len(probes)
    assert len(probes) >= 1
    seen = [(r["method"], r["path"], r["status"]) for r in access if r["path"] != "/healthz"]
    assert seen == [
        ("POST", "/v1/records", 200), ("GET", "/metrics", 200), ("GET", "/v1/slis", 200),
        ("GET", "/nowhere", 404),
    ] * (REQUESTS // 4)  # fmt: skip
    for r in access:
        assert r["level"] == "INFO"
        assert isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0
        assert r["message"].startswith(f"{r['method']} {r['path']} {r['status']} ")
    loggers = {r["logger"] for r in records}
    assert {"msgtally", "uvicorn.error", "msgtally.access"} <= loggers


def test_the_level_and_the_access_log_from_the_environment(tmp_path: Path) -> None:
    env = {"MSGTALLY_LOG_LEVEL": "warning", "MSGTALLY_ACCESS_LOG": "true"}
    with serve(tmp_path, env=env) as served:
        traffic(served.url)
    assert served.lines == []  # nothing at warning or above; access lines are INFO


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
        (["--log-format", "yaml"], "argument --log-format: invalid choice: 'yaml'"),
    ],
)
def test_a_bad_flag_names_it(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", *args])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MSGTALLY_LOG_LEVEL": "loud"},
         "--log-level: input should be 'debug', 'info', 'warning' or 'error' (got 'loud')"),
        ({"MSGTALLY_LOG_FORMAT": "xml"},
         "--log-format: input should be 'text' or 'json' (got 'xml')"),
    ],
)  # fmt: skip
def test_a_bad_environment_variable_names_the_setting(
    env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        settings_from_args(cli.build_parser().parse_args(["serve"]))
    assert says in str(error.value)
    assert error.value.code == 2


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_json_setup_puts_every_logger_on_one_line_an_exception_included() -> None:
    """The CLI's setup itself: msgtally's loggers, uvicorn's, a warning, an exception."""
    root = logging.getLogger()
    kept = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        logs.configure("info", "json", stream)
        logging.getLogger("msgtally").info("one\ntwo")  # a newline stays inside the line
        logging.getLogger("uvicorn.error").warning("from uvicorn")
        logging.getLogger("msgtally.app").debug("below the level")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("msgtally.app").exception("engine tick failed")
    finally:
        root.handlers[:] = kept[0]
        root.setLevel(kept[1])
        logging.captureWarnings(False)
    one, uvicorn, failed = _lines(stream)
    assert (one["level"], one["logger"], one["message"]) == ("INFO", "msgtally", "one\ntwo")
    assert (uvicorn["level"], uvicorn["logger"]) == ("WARNING", "uvicorn.error")
    assert failed["level"] == "ERROR" and failed["message"] == "engine tick failed"
    assert failed["exc_info"].startswith("Traceback (most recent call last):")
    assert failed["exc_info"].endswith("RuntimeError: boom")
    for line in (one, uvicorn, failed):
        assert RFC3339_UTC.match(line["time"])
