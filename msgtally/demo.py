"""`msgtally demo`: a simulated lossy pipeline through a real collector.

Starts the collector on a fresh SQLite file, posts the simulated records over
HTTP in shim-sized batches, reconciles, and prints the SLIs beside the ground
truth of what was injected.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.slis.read.figures import SLI, with_contracts
from msgtally.slis.read.query import read_slis
from msgtally.slis.read.report import render_table
from msgtally.slis.spec.model import Contract, Spec
from msgtally.slis.spec.semantics import Semantics
from msgtally.store.db import StoreError, open_store
from msgtally.store.tables import meta

from .app import create_app
from .progress import progress
from .server import BackgroundServer
from .simulate import FLOWS, batches, simulate, truth

# Delivery contracts the demo's pipeline is checked against (`serve --spec` in real use):
# payments promises exactly-once and breaks it, telemetry promises at-most-once and keeps it.
CONTRACTS = Spec(
    service="demo",
    slos=(),
    contracts=(
        Contract("payments", Semantics.EXACTLY_ONCE),
        Contract("telemetry", Semantics.AT_MOST_ONCE),
    ),
)


def _fresh_db(path: Path) -> None:
    """Recreate the demo file, but never clobber a store the demo did not make."""
    if path.exists():
        made_by_demo = None
        try:
            store = open_store(str(path), create=False)
            with store.connect() as conn:
                made_by_demo = conn.execute(
                    select(meta.c.value).where(meta.c.key == "demo")
                ).scalar_one_or_none()
            store.dispose()
        except (StoreError, SQLAlchemyError):
            pass  # not a store at all: not the demo's either
        if made_by_demo is None:
            raise StoreError(
                f"{path} exists and was not made by the demo; pass --db with a new file name"
            )
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_demo(db: str, seed: int = 7, ids: int = 20_000) -> int:
    path = Path(db)
    _fresh_db(path)
    store = open_store(str(path))
    with store.begin() as conn:
        conn.execute(meta.insert().values(key="demo", value="1"))
    config = ReconcileConfig(stream_deadlines={f.stream: f.deadline for f in FLOWS})
    now = time.time()
    records = simulate(ids, start=now - 2 * 3600, seed=seed)
    err = sys.stderr
    print(
        f"simulated {len(records)} records on {len(FLOWS)} streams ({ids} messages each)",
        file=err,
    )

    with (
        BackgroundServer(create_app(store, config)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        print(f"collector listening on {server.url}, store {path}", file=err)
        sent = 0
        started = time.monotonic()
        with progress("ingesting", len(records)) as advance:
            for chunk in batches(records, 2000, random.Random(seed)):
                resp = client.post(
                    "/v1/records",
                    content=json.dumps(chunk),
                    headers={"content-type": "application/json"},
                )
                resp.raise_for_status()
                sent += len(chunk)
                advance(len(chunk), f"{sent}/{len(records)} records")
        print(
            f"  ingested {sent} records over HTTP "
            f"({sent / (time.monotonic() - started):,.0f} records/s)",
            file=err,
        )
        # A repeated batch, as a shim resends after a timeout: counted once.
        client.post("/v1/records", json=records[:500]).raise_for_status()
        print("  resent 500 records, as a shim does after a timeout", file=err)
        started = time.monotonic()
        with progress("reconciling", len(records) + 500) as advance:
            result = reconcile(store, config, now, on_tick=lambda r: advance(
                r.records, f"applied {r.records} records, {r.judged} verdicts"))  # fmt: skip
        print(
            f"reconciled {result.records} records: {result.judged} verdicts in "
            f"{time.monotonic() - started:.2f}s",
            file=err,
        )
        lost = client.get("/v1/discrepancies", params={"kind": "lost", "limit": 3}).json()

    with store.connect() as conn:
        slis = with_contracts(read_slis(conn), CONTRACTS)
    print()
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(render_table(slis, wide=False, colour=colour))
    declared = ", ".join(f"{c.stream} {c.semantics.value}" for c in CONTRACTS.contracts)
    print(f"(contracts, as an SLO spec would declare them: {declared})")
    print()
    expected = {key: outcome.counts for key, outcome in truth(records).items()}
    print(_truth_table(slis, expected))
    if lost["ids"]:
        sample = ", ".join(f"{d['stream']}/{d['group']}/{d['message_id']}" for d in lost["ids"])
        print(f"\nsome lost ids (GET /v1/discrepancies?kind=lost): {sample}")
    print(
        f"\ndata: {path.resolve()}\n"
        f"serve it:  msgtally serve --db {path}   (then GET /v1/slis, /metrics)\n"
        f"report:    msgtally report --db {path} [--json]   (--help: what each column means)\n"
        "next:      docs/quickstart.md (your own pipeline: examples/rabbitmq_pipeline.py, "
        "examples/kafka_pipeline.py)"
    )
    store.dispose()
    measured = {(s.stream, s.group) for s in slis}
    ok = measured == set(expected) and not any(
        _diffs(s, expected[(s.stream, s.group)]) for s in slis
    )
    return 0 if ok else 1


def _diffs(s: SLI, expected: dict[str, int]) -> list[str]:
    return [f"{f} {getattr(s, f)}!={n}" for f, n in expected.items() if getattr(s, f) != n]


def _truth_table(slis: list[SLI], truth: dict[tuple[str, str], dict[str, int]]) -> str:
    lines = ["what the oracle says the records count for, vs measured (every figure must match):"]
    for s in slis:
        expected = truth.get((s.stream, s.group), {})
        diffs = _diffs(s, expected) if expected else ["no such stream and group in the records"]
        verdict = "match" if not diffs else "MISMATCH " + ", ".join(diffs)
        lines.append(
            f"  {s.stream}/{s.group}: lost {expected.get('lost', 0)}, duplicated "
            f"{expected.get('duplicated', 0)}, retried {expected.get('retried', 0)}, "
            f"late {expected.get('late', 0)}, unexpected {expected.get('unexpected', 0)},"
            f" recovered {expected.get('recovered', 0)}: {verdict}"
        )
    return "\n".join(lines)
