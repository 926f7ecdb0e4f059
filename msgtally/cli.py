"""The `msgtally` command: serve, reconcile, report, demo, check, alerts, dashboards."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

from pydantic import ValidationError

from msgtally.ingest.db import DEFAULT_DB_URL, open_engine

from . import slo_commands
from .settings import Settings


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return key, value


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        help=f"store URL or SQLite file path (default: MSGTALLY_DB or {DEFAULT_DB_URL}); "
        "PostgreSQL: postgresql+psycopg://user@host/dbname",
    )


def _add_reconcile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--deadline", type=float, help="seconds a produced id has to be consumed (default 300)"
    )
    p.add_argument(
        "--stream-deadline",
        type=_kv,
        action="append",
        default=[],
        metavar="STREAM=SECONDS",
        help="deadline for one stream (repeatable)",
    )
    p.add_argument(
        "--expect",
        type=_kv,
        action="append",
        default=[],
        metavar="STREAM=GROUP[,GROUP]",
        help="groups that must receive a stream even before they consume (repeatable)",
    )
    p.add_argument(
        "--settle",
        type=float,
        help="seconds past a deadline before an id is classified, for ingest lag (default 10)",
    )
    slo_commands.add_buckets(
        p, "--latency-buckets", "bounds of the latency histogram; include every SLO threshold"
    )


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    for name in ("db", "host", "port", "deadline", "settle", "interval", "max_body"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "latency_buckets", None):
        overrides["latency_buckets"] = args.latency_buckets
    if getattr(args, "no_reconcile", False):
        overrides["reconcile"] = False
    if getattr(args, "stream_deadline", None):
        overrides["stream_deadlines"] = {s: float(v) for s, v in args.stream_deadline}
    if getattr(args, "expect", None):
        expected: dict[str, list[str]] = {}
        for stream, groups in args.expect:
            expected.setdefault(stream, []).extend(g for g in groups.split(",") if g)
        overrides["expected_groups"] = expected
    settings = Settings(**overrides)  # type: ignore[arg-type]
    settings.reconcile_config()  # validates buckets and deadlines up front
    return settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .app import create_app

    engine = open_engine(settings.db)
    app = create_app(
        engine,
        settings.reconcile_config(),
        max_body=settings.max_body,
        reconcile_interval=settings.interval if settings.reconcile else None,
    )
    loop = f"every {settings.interval:g}s" if settings.reconcile else "off"
    print(
        f"msgtally collector on http://{settings.host}:{settings.port} "
        f"(store: {engine.url.render_as_string(hide_password=True)}, "
        f"reconcile: {loop})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from msgtally.reconcile import PassResult, reconcile

    engine = open_engine(settings.db)
    config = settings.reconcile_config()
    while True:
        started = time.monotonic()

        def progress(part: PassResult) -> None:
            if part.batches:
                print(
                    f"  slice: {part.records} records, {part.classified} classified",
                    file=sys.stderr,
                )

        result = reconcile(engine, config, args.now, on_slice=progress)
        print(
            f"reconciled {result.records} records in {result.batches} batches: "
            f"{result.classified} ids classified, {result.updated} updated "
            f"({time.monotonic() - started:.2f}s)",
            file=sys.stderr,
        )
        if not args.loop:
            return 0
        time.sleep(settings.interval)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from msgtally.slis.query import read_slis
    from msgtally.slis.report import render_table

    engine = open_engine(settings.db)
    with engine.connect() as conn:
        slis = read_slis(conn, args.stream, args.group)
    if args.json:
        print(json.dumps([s.to_json() for s in slis], indent=2))
    else:
        print(render_table(slis))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return run_demo(db=args.db or "msgtally-demo.db", seed=args.seed, ids=args.ids)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msgtally",
        description="Message delivery SLIs: joins produced and consumed message ids into "
        "delivered, lost, duplicated, retried, unexpected and latency figures.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run the collector (and its reconcile loop)",
        description="Run the collector: POST /v1/records, GET /v1/slis, "
        "/v1/discrepancies, /metrics, /healthz, /readyz.",
    )
    _add_db(p)
    _add_reconcile(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8410)")
    p.add_argument(
        "--no-reconcile",
        action="store_true",
        help="ingest only; run `msgtally reconcile --loop` elsewhere",
    )
    p.add_argument("--interval", type=float, help="seconds between reconcile passes (default 5)")
    p.add_argument("--max-body", type=int, help="largest request body in bytes (default 8 MiB)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "reconcile",
        help="join and classify what has been ingested",
        description="Run one reconcile pass (or a loop) over the store.",
    )
    _add_db(p)
    _add_reconcile(p)
    p.add_argument(
        "--now",
        type=float,
        metavar="UNIX_TS",
        help="classify as of this time instead of the clock (tests, backfills)",
    )
    p.add_argument("--loop", action="store_true", help="keep reconciling every --interval")
    p.add_argument("--interval", type=float, help="seconds between passes with --loop")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser(
        "report",
        help="print the SLIs per stream and group",
        description="Print the SLIs per stream and consumer group.",
    )
    _add_db(p)
    p.add_argument("--json", action="store_true", help="a JSON list of objects")
    p.add_argument("--stream", help="only this stream")
    p.add_argument("--group", help="only this consumer group")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "demo",
        help="simulate a lossy pipeline against a real collector",
        description="Start a collector on a fresh SQLite file, drive a "
        "simulated pipeline with injected loss, duplicates, retries, dead "
        "letters and latency through it, reconcile, and print the SLIs beside "
        "the injected ground truth.",
    )
    p.add_argument("--db", help="SQLite file for the demo (default msgtally-demo.db; recreated)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--ids", type=int, default=20_000, help="messages per stream (default 20000)")
    p.set_defaults(func=cmd_demo)

    slo_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = _settings(args)
    except (ValidationError, ValueError) as exc:
        print(f"msgtally: invalid settings: {exc}", file=sys.stderr)
        return 2
    code: int = args.func(args, settings)
    return code


if __name__ == "__main__":
    sys.exit(main())
