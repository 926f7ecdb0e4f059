"""Schemathesis against the collector's own OpenAPI document: thousands of
generated requests, valid and not, on a live collector; never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy import Engine

from msgtally.reconcile.config import ReconcileConfig
from tests.conftest import LiveCollector

pytestmark = pytest.mark.slow


@pytest.fixture
def api_schema(store: Engine) -> Iterator[schemathesis.BaseSchema]:
    with LiveCollector(store, ReconcileConfig(), reconcile_interval=0.05) as live:
        yield schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_makes_the_collector_fail(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
