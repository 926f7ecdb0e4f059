"""Credentials: nothing is dropped for a token the collector refuses, and a
token rotation needs no restart.

A shim whose token is refused (401) holds its records (within its buffer's
bound) and sends them once the collector accepts the token; the collector's
token file holds several tokens, is read again when it changes and on SIGHUP,
and keeps the tokens in force when it becomes unusable. Real collectors (in
a thread, and `msgtally serve` as a subprocess), real shims, no mocks.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from msgtally.auth import TokenError, TokenFile, parse_tokens
from msgtally.ingest.shim.tally import Tally
from msgtally.reconcile.engine import reconcile
from msgtally.server import free_port
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.test_sdk import CONFIG, figures, stored, total, unique

REPO = Path(__file__).resolve().parent.parent
SHIPPER_LOG = "msgtally.ingest.shim.shipper"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Engine]:
    eng = open_store(f"sqlite:///{tmp_path / 'tokens.db'}")
    yield eng
    eng.dispose()


def wait_for(what: str, done: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def scrape(url: str, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(f"{url}/metrics", headers=bearer(token))
    resp.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


UNAUTHORIZED = ("msgtally_ingest_rejected_total", (("reason", "unauthorized"),))


def calls(tally: Tally, n_ids: int, group: str = "g") -> None:
    """produced + consumed for n_ids ids: 2 * n_ids records."""
    for i in range(n_ids):
        headers = tally.produced(f"m{i}")
        tally.consumed(f"m{i}", group=group, headers=headers)


# -- the token file -------------------------------------------------------------------


def test_a_token_file_holds_tokens_one_a_line_with_comments() -> None:
    text = "# rotated 2024-05-01\n\n  old-token  \r\nnew-token\n# old one goes soon\nnew-token\n"
    assert parse_tokens(text, "tokens") == ("old-token", "new-token")
    with pytest.raises(TokenError, match=r"^tokens, line 2: a token is printable ASCII"):
        parse_tokens("good\ntwo words\n", "tokens")
    with pytest.raises(TokenError, match=r"^tokens holds no token"):
        parse_tokens("# nothing yet\n\n", "tokens")


def test_every_token_of_the_file_is_accepted(tmp_path: Path, store: Engine) -> None:
    path = tmp_path / "tokens"
    path.write_text("# two tokens during a rotation\nold-token\nnew-token\n")
    tokens = TokenFile(path)
    with LiveCollector(store, CONFIG, token=tokens.tokens) as live:
        for token in ("old-token", "new-token"):
            assert httpx.get(f"{live.url}/v1/slis", headers=bearer(token)).status_code == 200
        refused = httpx.get(f"{live.url}/v1/slis", headers=bearer("old-token new-token"))
        assert refused.status_code == 401
        assert httpx.get(f"{live.url}/v1/slis").status_code == 401


def test_the_file_is_read_again_when_its_mtime_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("old-token\n")
    tokens = TokenFile(path, poll=0.05)
    tokens.watch()
    try:
        assert tokens.tokens.check(b"Bearer new-token") == "the token is not valid"
        # Written elsewhere and renamed over the old file, as a rotation should be.
        fresh = tmp_path / "tokens.new"
        fresh.write_text("old-token\nnew-token\n")
        fresh.rename(path)
        wait_for("new-token accepted", lambda: tokens.tokens.check(b"Bearer new-token") is None)
        assert tokens.tokens.check(b"Bearer old-token") is None
        # Edited in place: the mtime (and size) change.
        path.write_text("new-token\n")
        wait_for("old-token refused", lambda: tokens.tokens.check(b"Bearer old-token") is not None)
        assert tokens.tokens.check(b"Bearer new-token") is None
    finally:
        tokens.stop()


def test_an_unusable_file_keeps_the_tokens_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("old-token\nnew-token\n")
    tokens = TokenFile(path)
    caplog.set_level(logging.INFO, logger="msgtally.auth")
    for spoil, why in (
        (lambda: path.write_text("# all commented out\n"), "holds no token"),
        (lambda: path.write_text("two words\n"), "line 1: a token is printable ASCII"),
        (lambda: path.write_bytes(b"\xff\xfe"), "is not UTF-8 text"),
        (path.unlink, "cannot read"),
    ):
        caplog.clear()
        spoil()
        assert tokens.changed()
        assert tokens.reload("the file changed") is False
        assert tokens.tokens.check(b"Bearer old-token") is None
        assert tokens.tokens.check(b"Bearer new-token") is None
        (line,) = caplog.records
        assert line.levelno == logging.ERROR
        assert why in line.getMessage()
        assert "the 2 token(s) read before stay in force" in line.getMessage()
    path.write_text("newer-token\n")
    assert tokens.reload("SIGHUP") is True
    assert tokens.tokens.check(b"Bearer newer-token") is None
    assert tokens.tokens.check(b"Bearer old-token") == "the token is not valid"


# -- a shim whose token is refused ----------------------------------------------------


def test_a_refused_token_holds_the_records_until_the_collector_takes_it(
    tmp_path: Path, store: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The buffer's bound still applies: past it the oldest records are dropped
    and counted, and those drops reach the collector once the token passes."""
    caplog.set_level(logging.WARNING, logger=SHIPPER_LOG)
    path = tmp_path / "tokens"
    path.write_text("old-token\n")
    tokens = TokenFile(path, poll=0.05)
    tokens.watch()
    stream = unique("held")
    registry = CollectorRegistry()
    max_buffer = 1000
    try:
        with LiveCollector(store, CONFIG, token=tokens.tokens) as live:
            tally = Tally(stream, collector_url=live.url, registry=registry, tracing=False,
                          token="new-token", batch_size=100, max_buffer=max_buffer,
                          flush_interval=0.05)  # fmt: skip
            calls(tally, 750)  # 1,500 records: more than the buffer holds
            assert not tally.flush(10)  # False at the first refusal
            assert not tally.flush(10)
            assert stored(store, stream) == []
            held = len(tally.shipper._buffer)
            dropped = total(registry, "msgtally_sdk_records_dropped_total")
            assert held <= max_buffer
            assert 1 <= 1500 - dropped - held <= 100  # the rest: one batch, in the thread's hand
            assert dropped >= 1500 - max_buffer - 100
            errors = [r for r in caplog.records if r.name == SHIPPER_LOG]
            (line,) = errors  # once a minute, however many refusals
            assert line.levelno == logging.ERROR
            assert "refused the shim's credential (401: the token is not valid)" in (
                line.getMessage()
            )
            assert tally.shipper.auth_refusals >= 2

            path.write_text("old-token\nnew-token\n")  # the watcher sees the mtime change
            slis = f"{live.url}/v1/slis"
            wait_for("new-token accepted",
                     lambda: httpx.get(slis, headers=bearer("new-token")).status_code == 200)
            assert tally.flush(30)  # sends at once, backoff or not
            rows = stored(store, stream)
            refusals = tally.shipper.auth_refusals
            metrics = scrape(live.url, "old-token")
            reconcile(store, CONFIG, now=time.time() + 60)
            resp = httpx.get(f"{live.url}/v1/slis", headers=bearer("new-token"))
            (row,) = resp.json()
            tally.close()
    finally:
        tokens.stop()
    assert len(rows) + dropped == 1500  # every record stored, or dropped and counted
    assert metrics[UNAUTHORIZED] == refusals
    last = [r for r in caplog.records if r.name == SHIPPER_LOG][-1]
    assert "accepts the shim's credential again" in last.getMessage()
    produce_drops = 1500 // 2 - sum(1 for r in rows if r["kind"] == "produce")
    p = {r["message_id"] for r in rows if r["kind"] == "produce"}
    c = {r["message_id"] for r in rows if r["kind"] == "consume"}
    got, want = figures(
        row,
        produced=len(p),
        delivered=len(p & c),
        lost=len(p - c),
        unexpected=len(c - p),
        attempts=len(p & c),
        records_dropped=int(dropped),
        produce_records_missing=produce_drops,
        consume_records_missing=int(dropped) - produce_drops,
    )
    assert got == want


def test_refusals_on_every_ingest_endpoint_are_counted(store: Engine) -> None:
    with LiveCollector(store, CONFIG, token="s3cret") as live:
        for headers in ({}, bearer("wrong")):
            assert httpx.post(f"{live.url}/v1/records", json=[], headers=headers).status_code == 401
            traces = httpx.post(f"{live.url}/v1/traces", content=b"", headers={
                **headers, "content-type": "application/x-protobuf"})  # fmt: skip
            assert traces.status_code == 401
        assert httpx.get(f"{live.url}/v1/slis").status_code == 401  # not an ingest endpoint
        metrics = scrape(live.url, "s3cret")
    assert metrics[UNAUTHORIZED] == 2
    otlp = ("msgtally_otlp_rejected_total", (("reason", "unauthorized"), ("transport", "http")))
    assert metrics[otlp] == 2


# -- the rotation on a running `msgtally serve` ----------------------------------------


def _same_signature_rewrite(path: Path, text: str) -> None:
    """Rewrite the file in place with the same size (a comment pads it) and
    mtime, so that only SIGHUP, not the watcher's look at the file, can make
    the collector read it."""
    before = path.stat()
    text += "#" + "." * (before.st_size - len(text.encode()) - 2) + "\n"
    assert len(text.encode()) == before.st_size
    with open(path, "r+", encoding="utf-8") as f:
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_rotation_with_sighup_on_a_running_collector_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=SHIPPER_LOG)
    path = tmp_path / "tokens"
    path.write_text("old-token\n#" + "." * 30 + "\n")  # room for the new token, below
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "collector.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "msgtally.cli", "serve", "--db", str(tmp_path / "s.db"),
             "--port", str(port), "--no-otlp-grpc", "--token-file", str(path),
             "--interval", "0.1", "--deadline", "60", "--settle", "0"],
            cwd=tmp_path, stderr=log_file, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    old, new = bearer("old-token"), bearer("new-token")

    def answers(headers: dict[str, str]) -> int:
        try:
            return httpx.get(f"{url}/v1/slis", headers=headers).status_code
        except httpx.TransportError:
            return 0

    stream = unique("rotation")
    registry = CollectorRegistry()
    try:
        wait_for("the collector up", lambda: answers(old) == 200)
        tally = Tally(stream, collector_url=url, registry=registry, tracing=False,
                      token="new-token", flush_interval=0.05)  # fmt: skip
        calls(tally, 500)  # 1,000 records
        assert not tally.flush(10)
        assert answers(new) == 401

        _same_signature_rewrite(path, "old-token\nnew-token\n")
        proc.send_signal(signal.SIGHUP)
        wait_for("new-token accepted", lambda: answers(new) == 200)
        assert answers(old) == 200  # the overlap: both work until the old one is removed
        assert tally.flush(30)
        refusals = tally.shipper.auth_refusals

        def judged() -> dict[str, Any]:
            rows = httpx.get(f"{url}/v1/slis", headers=new, params={"stream": stream}).json()
            return rows[0] if rows else {}

        wait_for("every id judged", lambda: judged().get("delivered") == 500)
        row = judged()
        metrics = scrape(url, "new-token")
        tally.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0, log_path.read_text()
    assert "read again (SIGHUP): 2 token(s) in force" in log_path.read_text()
    got, want = figures(row, produced=500, delivered=500, attempts=500)
    assert got == want
    assert metrics[UNAUTHORIZED] == refusals >= 1
    assert metrics[("msgtally_ingest_records_total", (("result", "accepted"),))] == 1000
    assert total(registry, "msgtally_sdk_records_dropped_total") == 0
    assert total(registry, "msgtally_sdk_records_shipped_total") == 1000
    assert any(
        r.levelno == logging.ERROR and "401: the token is not valid" in r.getMessage()
        for r in caplog.records
    )
