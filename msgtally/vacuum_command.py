"""`msgtally vacuum`: prune now what is due and give the space back.

The engine prunes in the background (msgtally.reconcile.retention, a few
chunks every few seconds); this is the operator's way to do it at once, with
the same rules and the same code, after a long stop or a shorter --retain.
It takes the engine's lease: pruning beside a running engine could delete
rows a back-fill is reading, so while a collector's engine runs it refuses
(the engine does the same work itself).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import CommandError

if TYPE_CHECKING:  # the store is imported when the command runs
    from sqlalchemy import Engine

    from msgtally.reconcile.history import Retention

DESCRIPTION = (
    "Prune what is due now, by the collector's rules: log rows applied, past every kept "
    "checkpoint and older than --retain; the per-id rows of discrepant ids --retain-verdicts "
    "past their deadline; per-minute figures older than --retain (per-hour ones with --spec: "
    "its longest period + 30 days). Tallies, histograms and sketches stay: every figure is "
    "what it was. Then the space goes back: SQLite gives its free pages back to the file "
    "system (--full: rewrites the file, also for a store made before incremental "
    "auto-vacuum); PostgreSQL: VACUUM (ANALYZE) of the pruned tables (--full: VACUUM FULL, "
    "which locks them while it runs). Give the collector's own --retain, --retain-verdicts "
    "and --spec (or its --config). Refused while a collector's engine holds the store: it "
    "prunes the same way by itself."
)
# The tables pruning deletes from: vacuumed on PostgreSQL.
PRUNED = ("log", "ticks", "tick_loads", "engine_events", "verdicts")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_db: Callable[[argparse.ArgumentParser], None],
    add_retain: Callable[[argparse.ArgumentParser], None],
    add_spec: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "vacuum",
        help="prune what is past its retention now and give the disk space back",
        description=DESCRIPTION,
    )
    add_db(p)
    add_retain(p)
    add_spec(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be pruned, delete nothing (counted in a transaction rolled back)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="rewrite the store to its smallest size: SQLite VACUUM (needs free disk of the "
        "store's size), PostgreSQL VACUUM FULL; writers wait meanwhile",
    )
    p.set_defaults(func=cmd_vacuum)


def _retention(args: argparse.Namespace) -> Retention:
    """The collector's retention; per-hour rows only with a spec (without one this
    command cannot know the collector's longest SLO period: they are left to it)."""
    from msgtally.reconcile.history import Retention

    from . import slo_commands
    from .settings import settings_from_args

    settings = settings_from_args(args)
    if settings.spec is None:
        return Retention(settings.retain, float("inf"), settings.retain_verdicts)
    spec = slo_commands.load_spec_file(settings.spec, settings.latency_buckets)
    return settings.retention(spec.period.seconds)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def cmd_vacuum(args: argparse.Namespace) -> int:
    from msgtally.reconcile.lease import Lease, LeaseHeld
    from msgtally.store.db import open_store

    from .settings import settings_from_args

    retention = _retention(args)
    store = open_store(settings_from_args(args).db, create=False)
    lease = Lease(store)
    try:
        try:
            lease.acquire()
        except LeaseHeld as exc:
            raise CommandError(
                f"{exc}: a collector's engine (msgtally serve, msgtally reconcile --loop) is "
                "running on this store and prunes it itself, a few chunks every 5 s; stop "
                "it to vacuum now"
            ) from None
        try:
            _vacuum(store, retention, dry_run=args.dry_run, full=args.full)
        finally:
            lease.release()
    finally:
        store.dispose()
    return 0


def _vacuum(store: Engine, retention: Retention, *, dry_run: bool, full: bool) -> None:
    from msgtally.reconcile import history
    from msgtally.reconcile import retention as log_retention

    from .progress import progress

    now = time.time()
    before = log_retention.store_bytes(store)
    hours = "" if retention.hours != float("inf") else " (per-hour rows: give --spec)"
    if dry_run:
        would, rows = log_retention.due(store, now, retention)
        print(f"would prune {would.log_rows:,} log rows ({would.ticks:,} ticks), "
              f"{would.verdicts:,} verdict rows, {rows:,} per-minute and per-hour rows"
              f"{hours}; the store is {_mib(before)}")  # fmt: skip
        return
    with progress("pruning", None, unit="rows") as advance:

        def chunk(part: log_retention.Pruned) -> None:
            advance(part.log_rows + part.verdicts,
                    f"{part.log_rows} log rows, {part.verdicts} verdict rows")  # fmt: skip

        done = log_retention.prune(store, now, retention, on_chunk=chunk)
    rows = history.prune(store, now, retention)
    print(f"pruned {done.log_rows:,} log rows ({done.ticks:,} ticks), {done.verdicts:,} verdict "
          f"rows, {rows:,} per-minute and per-hour rows{hours}")  # fmt: skip
    _give_back(store, full)
    print(f"the store: {_mib(before)} before, {_mib(log_retention.store_bytes(store))} now")


def _give_back(store: Engine, full: bool) -> None:
    """The freed space back: to the file system (SQLite), for reuse (PostgreSQL)."""
    from msgtally.reconcile import retention as log_retention
    from msgtally.store.db import write_script

    from .progress import progress

    if store.dialect.name == "postgresql":
        how = "FULL, ANALYZE" if full else "ANALYZE"
        # VACUUM runs outside a transaction: autocommit, a table at a time.
        with (
            store.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
            progress("vacuuming", len(PRUNED), unit="tables") as advance,
        ):
            for table in PRUNED:
                conn.exec_driver_sql(f"VACUUM ({how}) {table}")
                advance(1, f"VACUUM ({how}) {table}")
        return
    if full:
        print("rewriting the store (VACUUM): writers wait until it is done", flush=True)
        write_script(store, "VACUUM;")
        return
    if log_retention.auto_vacuum(store) != "incremental":
        free = log_retention.free_pages(store)
        print(f"this store was made before incremental auto-vacuum: its {free:,} free pages "
              "are reused by new rows, not given back; `msgtally vacuum --full` rewrites it "
              "once (then they are)")  # fmt: skip
        return
    with progress("giving pages back", log_retention.free_pages(store) or None,
                  unit="pages") as advance:  # fmt: skip
        while given := log_retention.reclaim(store, max_steps=1):
            advance(given, f"{given} pages given back")
