"""Shared fixtures: a store on SQLite and on the real PostgreSQL, a live collector.

Tests that need a service skip with the reason when it is unreachable; with
MSGTALLY_REQUIRE_SERVICES=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from msgtally.app import create_app
from msgtally.reconcile.config import ReconcileConfig
from msgtally.server import BackgroundServer
from msgtally.store.db import open_store

PG_ADMIN_URL = os.environ.get(
    "MSGTALLY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE = os.environ.get("MSGTALLY_REQUIRE_SERVICES") == "1"


def service_unavailable(reason: str) -> None:
    """Skip, or fail when the run promised every service."""
    if REQUIRE:
        pytest.fail(f"{reason} (MSGTALLY_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def _pg_admin() -> Engine:
    # A connection per use: a test may restart the server under a pooled one.
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin = _pg_admin()
    name = f"msgtally_test_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure to reach the server
        admin.dispose()
        service_unavailable(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on the embedded SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Engine]:
    eng = open_store(db_url)
    yield eng
    eng.dispose()


class LiveCollector(BackgroundServer):
    """A real collector (uvicorn, real sockets) in a thread of the test process."""

    def __init__(self, store: Engine, config: ReconcileConfig, **kwargs: Any) -> None:
        super().__init__(create_app(store, config, **kwargs))

    def __enter__(self) -> LiveCollector:
        super().__enter__()
        return self


@pytest.fixture
def collector(store: Engine) -> Iterator[LiveCollector]:
    with LiveCollector(store, ReconcileConfig()) as live:
        yield live


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the generated files under examples/ instead of comparing with them",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True under `pytest --update-golden`: golden tests write instead of compare."""
    return bool(request.config.getoption("--update-golden"))
