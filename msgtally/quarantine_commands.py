"""`msgtally quarantine list` and `msgtally quarantine retry`: the log rows the
engine set aside (msgtally.reconcile.quarantine), shown and put back."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import CommandError

if TYPE_CHECKING:  # the store is imported by the commands that use it: `msgtally check` needs none
    from sqlalchemy import Engine

DESCRIPTION = (
    "Log rows whose body the engine rejects are set aside in quarantine, with the "
    "reason, and the engine goes on with the rows after them; their records count "
    "nowhere until they are retried."
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_db: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "quarantine",
        help="log rows the engine set aside: list them, retry them",
        description=DESCRIPTION,
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser(
        "list",
        help="the rows in quarantine: log id, when received and set aside, records, reason",
        description=DESCRIPTION,
    )
    add_db(listing)
    listing.add_argument("--json", action="store_true", help="a JSON list of objects")
    listing.set_defaults(func=cmd_list)
    again = verbs.add_parser(
        "retry",
        help="put rows back for the engine (after a fix)",
        description="Put quarantined log rows back in the engine's queue: once the cause is "
        "fixed (a msgtally that reads them, a repaired log row), the next tick applies them "
        "and counts their records once; a row still rejected is set aside again, with "
        "the reason. The collector's engine picks them up as it runs.",
    )
    add_db(again)
    again.add_argument("ids", nargs="*", type=int, metavar="ID", help="log ids to retry")
    again.add_argument("--all", action="store_true", help="every row in quarantine")
    again.set_defaults(func=cmd_retry)


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[Engine]:
    from msgtally.store.db import open_store

    from .settings import settings_from_args

    store = open_store(settings_from_args(args).db, create=False)
    try:
        yield store
    finally:
        store.dispose()


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    from msgtally.reconcile.quarantine import listed

    with _store(args) as store, store.connect() as conn:
        rows = listed(conn)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    if not rows:
        print("no log rows in quarantine")
        return 0
    header = ["log id", "received (UTC)", "set aside (UTC)", "records", "bytes", "reason"]
    body = [[str(r.id), _when(r.received_at), _when(r.quarantined_at), str(r.records),
             str(r.bytes), r.reason] for r in rows]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header) - 1)]
    for line in [header, *body]:
        cells = [c.rjust(w) if i in (0, 3, 4) else c.ljust(w) for i, (c, w) in
                 enumerate(zip(line, widths, strict=False))]  # fmt: skip
        print("  ".join([*cells, line[-1]]))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from msgtally.reconcile.quarantine import NotQuarantined, retry

    if args.all == bool(args.ids):
        raise CommandError("give the log ids to retry, or --all")
    try:
        with _store(args) as store:
            ids = retry(store, None if args.all else args.ids)
    except NotQuarantined as exc:
        raise CommandError(str(exc)) from None
    print(
        f"{len(ids)} log row(s) back in the engine's queue: {', '.join(map(str, ids)) or '-'}",
        file=sys.stderr,
    )
    return 0


def note_under_report(store: Engine) -> None:
    """`msgtally report`: a line under the table naming the rows in quarantine."""
    from msgtally.reconcile.quarantine import listed
    from msgtally.slis.read.report import quarantine_note

    with store.connect() as conn:
        rows = listed(conn)
    if rows:
        print(f"\n{quarantine_note([r.id for r in rows])}")
