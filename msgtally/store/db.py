"""Opening the store: an embedded SQLite file by default, or PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import QueuePool
from sqlalchemy.schema import CreateColumn

from msgtally.store.tables import (
    PARTITIONED,
    in_flight,
    log,
    metadata,
    partitions,
    ticks,
    verdicts,
    verdicts_deadline,
)
from msgtally.store.url import DEFAULT_DB_URL, normalize_url


class StoreError(Exception):
    """The store cannot be opened: one line that says which store and why."""


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"{url!r} is not a store: give a SQLite file path or a postgresql:// URL"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(
            f"{parsed.get_backend_name()!r} stores are not supported: "
            "give a SQLite file path or a postgresql:// URL"
        )
    return parsed


def _check_sqlite_file(parsed: URL, create: bool) -> None:
    if not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    if not create and not path.exists():
        raise StoreError(f"no store at {path}: nothing was ingested there (check --db)")
    if create and not path.parent.exists():
        raise StoreError(f"cannot create the store {path}: folder {path.parent} does not exist")


def _first_line(exc: DBAPIError) -> str:
    text = str(exc.orig).strip() or type(exc.orig).__name__
    return text.splitlines()[0]


def open_store(url: str = DEFAULT_DB_URL, *, create: bool = True) -> Engine:
    """An engine with the pragmas and transaction mode msgtally relies on.

    `create` makes the store and its tables when missing; without it (the
    read-only commands) a store that does not exist is a StoreError, and
    nothing is created. Every failure to open the store is a StoreError.
    """
    url = normalize_url(url)
    parsed = _parse(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed, create)
        # Pooled: opening a connection (file, schema, pragmas) costs more than a
        # batch's insert. Each connection is used by one thread at a time.
        kwargs["poolclass"] = QueuePool
        kwargs["pool_size"] = 8
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
    try:
        store = create_engine(url, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use the store {url!r}: {exc}") from None
    if store.dialect.name == "sqlite":
        _sqlite_setup(store)
    shown = store.url.render_as_string(hide_password=True)
    try:
        if create:
            _add_partition_column(store)
            _add_columns(store, partitions)
            metadata.create_all(store)
            _remake_snapshots(store)
            # An index made after its table: create_all leaves existing tables as they are.
            verdicts_deadline.create(store, checkfirst=True)
            if store.dialect.name == "postgresql":
                _pg_storage(store)
        elif not inspect(store).has_table("log"):
            raise StoreError(f"{shown} is not a msgtally store (it has no msgtally tables)")
    except DBAPIError as exc:
        store.dispose()
        why = _first_line(exc)
        name = store.url.database
        missing = f'database "{name}" does not exist'
        if store.dialect.name == "postgresql" and name and missing in why:
            # The collector makes its tables, never the database.
            why += f"; create it first: createdb {name} (or in psql: CREATE DATABASE \"{name}\";)"
        raise StoreError(f"cannot open the store {shown}: {why}") from None
    return store


def _add_partition_column(store: Engine) -> None:
    """Output tables from before the Kafka log had no `part` column (and a key
    without it): each is copied aside, made again, and refilled as partition 0,
    in one transaction."""
    have = inspect(store)
    old = [name for name in PARTITIONED if have.has_table(name)
           and "part" not in {c["name"] for c in have.get_columns(name)}]  # fmt: skip
    if not old:
        return
    with write_tx(store) as conn:
        for name in old:
            table = metadata.tables[name]
            columns = ", ".join(c.name for c in table.c if c.name != "part")
            conn.exec_driver_sql(f"CREATE TABLE _old_{name} AS SELECT * FROM {name}")
            conn.exec_driver_sql(f"DROP TABLE {name}")
            table.create(conn)
            conn.exec_driver_sql(
                f"INSERT INTO {name} ({columns}, part) SELECT {columns}, 0 FROM _old_{name}"
            )
            conn.exec_driver_sql(f"DROP TABLE _old_{name}")


def _add_columns(store: Engine, table: Table) -> None:
    """Columns `table` gained since a store was made, added to it (each nullable
    or with a default: the rows it has keep their values)."""
    have = inspect(store)
    if not have.has_table(table.name):
        return  # create_all makes it whole
    present = {c["name"] for c in have.get_columns(table.name)}
    missing = [c for c in table.c if c.name not in present]
    if not missing:
        return
    with write_tx(store) as conn:
        for column in missing:
            ddl = CreateColumn(column).compile(dialect=store.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


def _remake_snapshots(store: Engine) -> None:
    """The in-flight table holds only the last tick's snapshot: a store made
    before it had a column gets it made again (the next tick fills it)."""
    have = {c["name"] for c in inspect(store).get_columns(in_flight.name)}
    if have != set(in_flight.c.keys()):
        in_flight.drop(store)
        in_flight.create(store)


# PostgreSQL's autovacuum on the tables the engine prunes from the head (log,
# ticks, verdicts): vacuumed after 1% of their rows (+ 10,000) are dead rather
# than 20%, without the cost delay, so freed space is reused by new rows before
# the table grows (docs/retention.md).
PG_STORAGE = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "10000",
    "autovacuum_vacuum_cost_delay": "0",
    "autovacuum_analyze_scale_factor": "0.02",
}


def _pg_storage(store: Engine) -> None:
    """Set PG_STORAGE on the pruned tables, where it is not set already (the
    ALTER takes a lock autovacuum also takes: not on every open)."""
    wanted = [f"{k}={v}" for k, v in PG_STORAGE.items()]
    with store.begin() as conn:
        for table in (log, ticks, verdicts):
            have = conn.exec_driver_sql(
                "SELECT reloptions FROM pg_class WHERE oid = %(t)s::regclass", {"t": table.name}
            ).scalar()
            if not set(wanted) <= set(have or ()):
                options = ", ".join(f"{k} = {v}" for k, v in PG_STORAGE.items())
                conn.exec_driver_sql(f"ALTER TABLE {table.name} SET ({options})")


def _sqlite_setup(store: Engine) -> None:
    @event.listens_for(store, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Pages freed by pruning (msgtally.reconcile.retention) go back to the file
        # system in steps (PRAGMA incremental_vacuum). Takes effect only on a new
        # file, before its first table and before WAL: a store made without it
        # needs one `msgtally vacuum --full`.
        cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cur.execute("PRAGMA journal_mode=WAL")
        # Once checkpointed, the WAL file shrinks back to this (bytes).
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # FULL: a 200 from ingest means the batch survives a power cut too.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.execute("PRAGMA temp_store=FILE")
        cur.close()

    @event.listens_for(store, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction that reads and
        # then writes can fail with SQLITE_BUSY_SNAPSHOT, which no timeout retries.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


WAL_SIZE_LIMIT = 64 * 1024 * 1024


def checkpoint_wal(store: Engine) -> None:
    """Copy SQLite's WAL into the database and start it over. SQLite's own
    checkpoints are passive: with readers always at work they never finish,
    and the WAL grows without bound. A no-op on PostgreSQL."""
    if store.dialect.name != "sqlite":
        return
    with store.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)")


def upsert(conn: Connection, table: Any) -> Any:
    """INSERT ... ON CONFLICT for the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


_writers: dict[str, threading.Lock] = {}
_writers_lock = threading.Lock()


def _writer_lock(store: Engine) -> threading.Lock | None:
    """SQLite has one writer at a time, and makes the others sleep and poll (1 to
    100 ms at a time): threads of this process queue on a lock instead, and the
    next writer starts the moment the last one commits."""
    if store.dialect.name != "sqlite":
        return None
    with _writers_lock:
        return _writers.setdefault(str(store.url.database), threading.Lock())


def write_script(store: Engine, script: str) -> None:
    """SQLite: run `script` (its own BEGIN IMMEDIATE ... COMMIT) to completion, as
    this process's one writer. A PRAGMA such as incremental_vacuum does its work
    a step at a time, and the driver's execute() takes only the first step (and
    leaves the statement open): executescript steps each statement to its end."""
    lock = _writer_lock(store)
    with lock or contextlib.nullcontext(), store.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.executescript(script)


@contextmanager
def write_tx(store: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on any error."""
    lock = _writer_lock(store)
    with lock or contextlib.nullcontext(), store.connect() as conn:
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield conn
