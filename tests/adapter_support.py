"""What the broker adapters' end-to-end tests share: the collector's side."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sqlalchemy import Engine

from msgtally.ingest.sdk import Tally
from msgtally.reconcile import ReconcileConfig, reconcile
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


def sli_of(url: str, stream: str, group: str) -> dict[str, Any]:
    """The collector's one SLI row for (stream, group)."""
    resp = httpx.get(f"{url}/v1/slis", params={"stream": stream, "group": group})
    resp.raise_for_status()
    (sli,) = resp.json()
    return dict(sli)


def discrepancy_ids(url: str, stream: str, group: str, kind: str) -> list[str]:
    """The message ids the collector reports for one discrepancy kind, sorted."""
    resp = httpx.get(
        f"{url}/v1/discrepancies", params={"stream": stream, "group": group, "kind": kind}
    )
    resp.raise_for_status()
    return sorted(d["message_id"] for d in resp.json()["ids"])


def discrepancies(live: LiveCollector, stream: str, kind: str) -> list[str]:
    return discrepancy_ids(live.url, stream, GROUP, kind)


def assert_figures(got: dict[str, Any], expected: dict[str, int]) -> None:
    assert {k: got[k] for k in expected} == expected
