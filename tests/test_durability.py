"""A real collector killed with SIGKILL while senders post: nothing it acknowledged
is lost, nothing is counted twice, and the figures are the oracle's."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from msgtally.server import free_port
from tests.oracle import COUNT_NAMES, Record, oracle


class Collector:
    """`msgtally serve` on a SQLite file, in its own process, to be killed."""

    def __init__(self, db: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "msgtally.cli", "serve", "--db", str(db), "--port",
               str(port), "--deadline", "2", "--settle", "0.5", "--interval", "0.05"]  # fmt: skip
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


def _wire(batch: list[Record]) -> list[dict[str, Any]]:
    keys = ("stream", "kind", "message_id", "ts", "record_id")
    return [
        {**{k: getattr(r, k) for k in keys}, **({"group": r.group} if r.group else {})}
        for r in batch
    ]


def test_kill_9_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    batches = _batches(rng, 60, time.time())
    db, port = tmp_path / "store.db", free_port()
    collector = Collector(db, port)
    kills = {12, 25, 26, 41}  # after these batches (two in a row: killed while recovering)
    resent = 0
    try:
        for j, batch in enumerate(batches):
            body = {"records": _wire(batch)}
            while True:  # as a shim: resend until a 200
                try:
                    if httpx.post(f"{collector.url}/v1/records", json=body, timeout=10) \
                            .status_code == 200:  # fmt: skip
                        break
                except httpx.TransportError:
                    pass
                resent += 1
                time.sleep(0.05)
            if j in kills:
                collector.kill()
                # the answer of the last batch is lost with it: a shim sends it again
                collector = Collector(db, port)
                assert httpx.post(f"{collector.url}/v1/records", json=body).status_code == 200
        want = oracle([r for batch in batches for r in batch], deadline=2.0)
        deadline = time.monotonic() + 30
        while True:
            slis = httpx.get(f"{collector.url}/v1/slis").json()
            got = {(r["stream"], r["group"]): r for r in slis}
            if set(got) == set(want) and all(
                {n: got[k][n] for n in COUNT_NAMES} == want[k].counts for k in want
            ):
                break
            assert time.monotonic() < deadline, (got, {k: v.counts for k, v in want.items()})
            time.sleep(0.2)
        for key, o in want.items():
            assert got[key]["latency_count"] == len(o.latencies)
            assert abs(got[key]["latency_sum"] - sum(o.latencies)) < 1e-6 * len(o.latencies) + 1e-9
        engine_counts = httpx.get(f"{collector.url}/metrics").text
        assert 'msgtally_reconcile_records_total{result="repeat"}' in engine_counts
    finally:
        collector.stop()
