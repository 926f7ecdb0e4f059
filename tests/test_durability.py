"""A real collector killed with SIGKILL while senders post: nothing it acknowledged
is lost, nothing is counted twice, and the figures are the oracle's, the records
missing from the senders' numbering too."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgtally.oracle import COUNT_NAMES, Mark, Record, missing_records, oracle
from msgtally.server import free_port

pytestmark = pytest.mark.slow


class Collector:
    """`msgtally serve` on a SQLite file, in its own process, to be killed."""

    def __init__(self, db: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "msgtally.cli", "serve", "--db", str(db), "--port",
               str(port), "--deadline", "2", "--settle", "0.5", "--interval", "0.05",
               "--otlp-grpc-port", "0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self._close()
                raise RuntimeError(err)
            time.sleep(0.05)
        raise RuntimeError("collector did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self._close()

    def _close(self) -> None:
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _batches(rng: random.Random, n: int, start: float) -> list[list[Record]]:
    """n batches of 50 ids, each id produced, and consumed by 0-2 of two groups
    (sometimes twice), with record ids as a shim sets them."""
    out = []
    for b in range(n):
        batch = []
        for i in range(50):
            mid, ts = f"b{b}-{i}", start + b * 0.01
            batch.append(Record("s", "produce", mid, ts, record_id=f"{mid}/p"))
            for g in ("g1", "g2"):
                for k in range(rng.choice((0, 1, 1, 1, 2))):
                    batch.append(Record("s", "consume", mid, ts + 0.1 + k, g,
                                        record_id=f"{mid}/{g}/{k}"))  # fmt: skip
        out.append(batch)
    return out


def _numbered(name: str, part: list[list[Record]]) -> tuple[list[list[Record]], list[Mark]]:
    """A sender's batches, its records numbered per sequence as a shim does, every
    17th number never sent; and its marks: how far it numbered each sequence."""
    last: dict[tuple[str, str, str], int] = {}
    out = []
    for batch in part:
        sent = []
        for r in batch:
            key = (r.stream, r.kind, r.group)
            last[key] = last.get(key, 0) + 1
            if last[key] % 17:
                sent.append(r._replace(producer=name, seq=last[key]))
        out.append(sent)
    return out, [Mark(name, s, k, n, g) for (s, k, g), n in last.items()]


def _wire(batch: list[Record]) -> list[dict[str, Any]]:
    keys = ("stream", "kind", "message_id", "ts", "record_id", "producer", "seq")
    return [
        {**{k: getattr(r, k) for k in keys}, **({"group": r.group} if r.group else {})}
        for r in batch
    ]


def _send_until_acknowledged(
    url: str, batches: list[list[Record]], marks: list[Mark], resent: list[int]
) -> None:
    """A shim's way: each batch again and again until a 200 (the answer of a
    batch that was committed may be lost with the collector: it comes twice);
    the marks last, on their own."""
    bodies = [{"records": _wire(batch), "sequences": []} for batch in batches]
    bodies.append({"records": [], "sequences": [m._asdict() for m in marks]})
    with httpx.Client(timeout=10) as client:
        for body in bodies:
            while True:
                try:
                    if client.post(f"{url}/v1/records", json=body).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                resent.append(1)
                time.sleep(0.05)
            time.sleep(0.03)  # a steady stream, so that the kills fall in the middle


def test_kill_9_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    batches = _batches(rng, 150, time.time())
    db, port = tmp_path / "store.db", free_port()
    collectors = [Collector(db, port)]
    resent: list[int] = []
    parts = [_numbered(f"sender{k}", batches[k::3]) for k in range(3)]
    senders = [
        threading.Thread(
            target=_send_until_acknowledged, args=(collectors[0].url, part, marks, resent)
        )
        for part, marks in parts
    ]
    try:
        for t in senders:
            t.start()
        for pause in (0.5, 0.7, 0.05, 0.9):  # 0.05: killed again while recovering
            time.sleep(pause)
            collectors[-1].kill()
            collectors.append(Collector(db, port))
        for t in senders:
            t.join(120)
        assert resent, "no kill fell while the senders were sending"
        url = collectors[-1].url
        sent = [r for part, _ in parts for batch in part for r in batch]
        want = oracle(sent, deadline=2.0)
        gaps = missing_records(sent, [m for _, marks in parts for m in marks])
        assert gaps, "no record left out"
        deadline = time.monotonic() + 30
        while True:
            slis = httpx.get(f"{url}/v1/slis").json()
            got = {(r["stream"], r["group"]): r for r in slis}
            if set(got) == set(want) and all(
                {n: got[k][n] for n in COUNT_NAMES} == want[k].counts
                and got[k]["produce_records_missing"] == gaps.get((k[0], "produce", ""), 0)
                and got[k]["consume_records_missing"] == gaps.get((k[0], "consume", k[1]), 0)
                for k in want
            ):
                break
            assert time.monotonic() < deadline, (got, {k: v.counts for k, v in want.items()})
            time.sleep(0.2)
        for key, o in want.items():
            assert got[key]["latency_count"] == len(o.latencies)
            assert abs(got[key]["latency_sum"] - sum(o.latencies)) < 1e-6 * len(o.latencies) + 1e-9
    finally:
        collectors[-1].stop()
