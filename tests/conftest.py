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
from sqlalchemy import Engine, create_engine, inspect, text
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


# What a store's schema is on PostgreSQL: every relation outside the system
# schemas with its columns, options, indexes, constraints and triggers, and the
# database's own settings. A test that changed any of it leaves a database that
# is made again, not reused.
SCHEMA_FINGERPRINT = """
SELECT concat_ws('|', n.nspname, c.relname, c.relkind, c.reloptions::text,
    (SELECT string_agg(concat_ws(':', a.attname, format_type(a.atttypid, a.atttypmod),
            a.attnotnull, pg_get_expr(d.adbin, d.adrelid)), ',' ORDER BY a.attnum)
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
    (SELECT string_agg(pg_get_indexdef(i.indexrelid), ',' ORDER BY 1)
     FROM pg_index i WHERE i.indrelid = c.oid),
    (SELECT string_agg(pg_get_constraintdef(k.oid), ',' ORDER BY 1)
     FROM pg_constraint k WHERE k.conrelid = c.oid),
    (SELECT string_agg(pg_get_triggerdef(t.oid), ',' ORDER BY 1)
     FROM pg_trigger t WHERE t.tgrelid = c.oid))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL SELECT 'setting ' || array_to_string(s.setconfig, ',') FROM pg_db_role_setting s
    WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
UNION ALL SELECT 'extension ' || extname FROM pg_extension
ORDER BY 1
"""


class PgStores:
    """One PostgreSQL store database per test process, emptied for each test.

    Making a database, its schema, and dropping it cost over a second a test on
    a busy machine; emptying the tables of one kept per process costs a tenth
    of that. A test gets the state a new store has: msgtally's tables as
    open_store makes them, no rows, identities restarted, no session left on it.
    A database whose schema a test changed is dropped and made again.
    """

    def __init__(self, worker: str) -> None:
        self.name = f"msgtally_store_{worker}_{secrets.token_hex(4)}"
        self.url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.name}"
        self.fingerprint: list[str] | None = None  # None: no database yet

    def fresh(self) -> str:
        """The URL of the database, as a store just made by open_store."""
        admin = _pg_admin()
        try:
            with admin.connect() as conn:
                conn.execute(  # sessions a test left (a pool, a held lease) end here
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": self.name},
                )
            if self.fingerprint is not None and self._empty_if_unchanged():
                return self.url
            self.drop(admin)
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        except Exception as exc:  # any failure to reach the server
            service_unavailable(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}")
        finally:
            admin.dispose()
        open_store(self.url).dispose()
        self.fingerprint = self._schema()
        return self.url

    def _schema(self) -> list[str]:
        eng = create_engine(self.url, poolclass=NullPool)
        try:
            with eng.connect() as conn:
                return [row[0] for row in conn.execute(text(SCHEMA_FINGERPRINT))]
        finally:
            eng.dispose()

    def _empty_if_unchanged(self) -> bool:
        """Truncate every table when the schema is still open_store's; False if not."""
        eng = create_engine(self.url, poolclass=NullPool)
        try:
            with eng.begin() as conn:
                if [row[0] for row in conn.execute(text(SCHEMA_FINGERPRINT))] != self.fingerprint:
                    return False
                tables = ", ".join(f'"{t}"' for t in inspect(conn).get_table_names())
                if tables:
                    conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
            return True
        finally:
            eng.dispose()

    def drop(self, admin: Engine) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.fingerprint = None


@pytest.fixture(scope="session")
def pg_stores() -> Iterator[PgStores]:
    stores = PgStores(os.environ.get("PYTEST_XDIST_WORKER", "main"))
    yield stores
    if stores.fingerprint is not None:
        admin = _pg_admin()
        stores.drop(admin)
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on the embedded SQLite file and on PostgreSQL (a new
    store's state: msgtally's tables, empty; pg_url is an empty database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    stores: PgStores = request.getfixturevalue("pg_stores")
    return stores.fresh()


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
