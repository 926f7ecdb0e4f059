"""Every case of the outcome vectors (tests/vectors/outcomes.json), through the store
and through the oracle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from msgtally.ingest.shim.wire import FIELDS
from msgtally.oracle import COUNT_NAMES, Record, nearest_rank, oracle
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from tests.harness import QUANTILES, close_to, figures, ingest

VECTORS = Path(__file__).resolve().parent / "vectors" / "outcomes.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text())["cases"]
# The counts a vector states; consume_errors is not among them.
VECTOR_COUNTS = tuple(name for name in COUNT_NAMES if name != "consume_errors")


def _records(case: dict[str, Any]) -> list[Record]:
    return [Record(**{k: v for k, v in r.items() if k in FIELDS}) for r in case["records"]]


def _config(case: dict[str, Any]) -> ReconcileConfig:
    return ReconcileConfig(deadline=float(case["deadline_seconds"]))


def _past_every_deadline(case: dict[str, Any], config: ReconcileConfig) -> float:
    return max(r["ts"] for r in case["records"]) + config.deadline + config.settle + 1


def _expected(case: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["stream"], e["group"]): e for e in case["expected"]}


def test_vectors_file_is_not_empty() -> None:
    assert len(CASES) >= 10
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_through_the_store(store: Engine, case: dict[str, Any]) -> None:
    config = _config(case)
    records = _records(case)
    assert ingest(store, records) == len(records)
    reconcile(store, config, _past_every_deadline(case, config))

    got = figures(store)
    expected = _expected(case)
    assert set(got) == set(expected)
    for key, exp in expected.items():
        row = got[key]
        assert {n: row[n] for n in VECTOR_COUNTS} == {n: exp[n] for n in VECTOR_COUNTS}, key
        lat = exp["latencies"]
        assert row["latency_count"] == len(lat), key
        assert row["latency_sum"] == pytest.approx(sum(lat), abs=1e-6), key
        for name, q in QUANTILES:
            assert close_to(row[name], nearest_rank(lat, q)), (key, name, row[name])
    # The vectors leave consume_errors out: the store must agree with the oracle on it.
    want_all = oracle(records, deadline=config.deadline)
    for key, row in got.items():
        assert row["consume_errors"] == want_all[key].counts["consume_errors"], key


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_through_the_oracle(case: dict[str, Any]) -> None:
    got = oracle(_records(case), deadline=float(case["deadline_seconds"]))
    expected = _expected(case)
    assert set(got) == set(expected)
    for key, exp in expected.items():
        outcome = got[key]
        assert {n: outcome.counts[n] for n in VECTOR_COUNTS} == {
            n: exp[n] for n in VECTOR_COUNTS
        }, key
        assert outcome.latencies == pytest.approx(exp["latencies"], abs=1e-6), key


def test_nearest_rank_agrees_with_the_model() -> None:
    """The oracle's quantile and msgtally.slis.read.figures's index pick the same value."""
    from msgtally.slis.read.figures import nearest_rank as model_rank

    for n in range(1, 120):
        values = [float(i) for i in range(n)]
        for _, q in QUANTILES:
            assert nearest_rank(values, q) == values[model_rank(q, n)]
