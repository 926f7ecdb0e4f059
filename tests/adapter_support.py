"""What the broker adapters' end-to-end tests share: the collector's side."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sqlalchemy import Engine

from ingest.sdk import Tally
from reconcile import ReconcileConfig, reconcile
from tests.conftest import LiveCollector

CONFIG = ReconcileConfig(deadline=5.0, settle=0)
GROUP = "billing"


def collector_figures(
    live: LiveCollector, store: Engine, tallies: list[Tally], stream: str
) -> dict[str, Any]:
    """Flush the shims, reconcile past every deadline, read the collector's SLIs."""
    for tally in tallies:
        assert tally.flush(10)
        tally.close()
    reconcile(store, CONFIG, now=time.time() + 60)
    rows = httpx.get(f"{live.url}/v1/slis", params={"stream": stream}).json()
    assert [r["group"] for r in rows] == [GROUP]
    return dict(rows[0])


def discrepancies(live: LiveCollector, stream: str, kind: str) -> list[str]:
    body = httpx.get(
        f"{live.url}/v1/discrepancies", params={"stream": stream, "group": GROUP, "kind": kind}
    ).json()
    return sorted(d["message_id"] for d in body["ids"])


def assert_figures(got: dict[str, Any], expected: dict[str, int]) -> None:
    assert {k: got[k] for k in expected} == expected
