"""The `msgtally` command: serve, reconcile, report, demo, check, alerts, dashboards."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from msgtally import __version__
from msgtally.record import ERROR_CLASSES
from msgtally.slis.read.report import legend as report_legend
from msgtally.store.url import DEFAULT_DB_URL

from . import kafka_commands, logs, quarantine_commands, slo_commands, vacuum_command
from .errors import CommandError

if TYPE_CHECKING:
    from _typeshed import SupportsWrite
    from sqlalchemy import Engine

    from msgtally.ingest.intake.kafka_log import KafkaWriter
    from msgtally.slis.spec.model import Spec

    from .settings import Settings

log = logging.getLogger("msgtally")

# Where a missing module comes from: the extra that installs it.
_EXTRAS = {
    "fastapi": "collector",
    "starlette": "collector",
    "uvicorn": "collector",
    "sqlalchemy": "collector",
    "psycopg": "collector",
    "grpc": "collector",
    "google": "collector",  # protobuf
    "opentelemetry": "collector",  # opentelemetry-proto (the api is always there)
    "pydantic": "collector",
    "pydantic_settings": "collector",
    "confluent_kafka": "kafka",
    "yaml": "slo",
    "grafana_foundation_sdk": "slo",
}


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return key, value


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML file of settings, named as the flags (max_series: 20000); flags and "
        "MSGTALLY_* variables win over it (default: MSGTALLY_CONFIG)",
    )
    p.add_argument(
        "--db",
        help=f"store URL or SQLite file path (default: MSGTALLY_DB or {DEFAULT_DB_URL}); "
        "PostgreSQL: postgresql+psycopg://user@host/dbname",
    )


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spec",
        metavar="FILE",
        help="an SLO spec whose delivery contracts to show beside the figures "
        "(default: MSGTALLY_SPEC)",
    )


def _spec(settings: Settings) -> Spec | None:
    if settings.spec is None:
        return None
    return slo_commands.load_spec_file(settings.spec, settings.latency_buckets)


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
        help="seconds past a deadline (and past an id's first receipt) before an id is "
        "judged, for ingest lag (default 10)",
    )
    p.add_argument(
        "--remember",
        type=float,
        help="seconds a judged id stays in memory after its deadline + settle, so that "
        "late records and resends find it (default 60)",
    )
    slo_commands.add_buckets(
        p, "--latency-buckets", "bounds of the latency histogram; include every SLO threshold"
    )
    _add_retain(p)


def _add_retain(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--retain",
        metavar="DURATION",
        help="how long the log and the per-minute figures are kept (7d, 12h, or seconds; "
        "default 7d); log rows go once applied, past every kept checkpoint and older than "
        "this; per-hour figures are kept the longest SLO period + 30 days "
        "(default: MSGTALLY_RETAIN)",
    )
    p.add_argument(
        "--retain-verdicts",
        metavar="DURATION",
        help="how long the per-id rows of discrepant ids (GET /v1/discrepancies) are kept "
        "past their deadline (default 90d; MSGTALLY_RETAIN_VERDICTS)",
    )


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        type=str.lower,
        help="log records at this level and above (default: MSGTALLY_LOG_LEVEL or info)",
    )
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        type=str.lower,
        help="text lines, or one JSON object a line: time, level, logger, message (and "
        "exc_info; method, path, status, duration_ms for access lines) "
        "(default: MSGTALLY_LOG_FORMAT or text)",
    )


def _listen(host: str, port: int) -> socket.socket:
    """Bind before saying "listening": a busy port is an error, not a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from msgtally.store.db import open_store

    from .app import create_app
    from .settings import settings_from_args

    settings = settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    sock = _listen(settings.host, settings.port)
    if settings.otlp_grpc:  # the gRPC server binds once serving; say it is busy now
        if settings.otlp_grpc_port == settings.port != 0:
            sock.close()
            raise CommandError(f"--otlp-grpc-port {settings.port} is the HTTP port (--port)")
        try:
            _listen(settings.host, settings.otlp_grpc_port).close()
        except CommandError as exc:
            sock.close()
            raise CommandError(f"{exc} (OTLP/gRPC: --otlp-grpc-port, --no-otlp-grpc)") from None
    token_file = settings.token_file_source()
    options = settings.collector_options(token_file)
    spec = _spec(settings)
    store = open_store(settings.db)
    writer = _kafka_writer(store, args.log) if args.log else None
    if writer is not None:
        options["reconcile_interval"] = None  # the workers reconcile (msgtally worker)
    from .status.pages import Links

    longest = spec.period.seconds if spec is not None else None
    links = Links(settings.prometheus_url, settings.grafana_url, settings.trace_url)
    app = create_app(
        store, settings.reconcile_config(), spec=spec, retention=settings.retention(longest),
        links=links, **options,
    )  # fmt: skip
    loop = f"every {settings.interval:g}s" if options["reconcile_interval"] else "off"
    if writer is not None:
        loop = f"off: the log is {writer.log}, msgtally worker reconciles it"
    grpc = f"{settings.host}:{settings.otlp_grpc_port}" if settings.otlp_grpc else "off"
    log.info(
        "msgtally collector on http://%s:%d (store: %s, reconcile: %s, OTLP: /v1/traces and "
        "gRPC %s)", settings.host, settings.port, store.url.render_as_string(hide_password=True),
        loop, grpc,
    )  # fmt: skip
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    log.info("status page: http://%s:%d/", shown, sock.getsockname()[1])
    if options["token"] is None:
        if settings.host in ("127.0.0.1", "::1", "localhost"):
            log.info("no token (--token-file or MSGTALLY_TOKEN): only this machine can reach it")
        else:
            log.warning("no token (--token-file or MSGTALLY_TOKEN): anyone who reaches %s:%d "
                        "can post records", settings.host, settings.port)  # fmt: skip
    elif token_file is not None:
        log.info("%d token(s) from %s, read again on SIGHUP and when it changes",
                 len(token_file.tokens), token_file.path)  # fmt: skip
    if token_file is not None:
        # A rotation without a restart: the file is read again when it changes and on SIGHUP.
        token_file.watch()
        signal.signal(signal.SIGHUP, lambda _sig, _frame: token_file.reload_soon())
    else:  # a reload (`systemctl reload`) must not end the collector (SIGHUP's default)
        signal.signal(signal.SIGHUP, lambda _sig, _frame: log.info("SIGHUP: no token file "
                                                                   "to read again"))
    # Logging is ours (log_config=None): uvicorn's records go through the root
    # handler; its access log (no duration) is off, ours is on with --access-log.
    asgi = logs.AccessLog(app) if settings.access_log else app
    server = uvicorn.Server(uvicorn.Config(asgi, log_config=None, access_log=False))
    # Everything loaded so far lives as long as the process: out of the cyclic
    # GC's sight, full collections stop walking it on every few thousand
    # allocations a request makes (bench/otlp_rate.py, bench/ingest_rate.py).
    gc.freeze()
    # Ctrl-C or SIGINT: uvicorn has shut down cleanly by the time it re-raises.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if writer is not None:
        writer.close()
    if token_file is not None:
        token_file.stop()
    if not server.started:  # uvicorn logged why (the application did not start)
        raise CommandError("the collector did not start (see above)")
    return 0


def _kafka_writer(store: Engine, url: str) -> KafkaWriter:
    """The collector's way to the Kafka log: every accepted request goes there."""
    from msgtally.ingest.intake.kafka_log import KafkaWriter
    from msgtally.ingest.intake.writer import log_to
    from msgtally.store.kafka_log import open_log

    where, count = open_log(store, url)
    writer = KafkaWriter(where, count).start()
    log_to(store, writer)
    return writer


def cmd_reconcile(args: argparse.Namespace) -> int:
    from msgtally.reconcile.engine import TickResult, reconcile
    from msgtally.store.db import open_store

    from .settings import settings_from_args

    settings = settings_from_args(args)
    if args.loop:
        logs.configure(settings.log_level, settings.log_format)
    store = open_store(settings.db)
    config = settings.reconcile_config()
    if args.loop:
        from .app import EngineLoop  # the collector's app: not for one pass

        loop = EngineLoop(store, config, settings.interval, settings.retention(None))
        log.info("msgtally engine on %s", store.url.render_as_string(hide_password=True))
        loop.start()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
        loop.stop()
        return 0
    from sqlalchemy import func, select

    from msgtally.store.tables import log_pending

    from .progress import progress

    started = time.monotonic()
    with store.connect() as conn:
        backlog = int(conn.execute(select(func.coalesce(func.sum(log_pending.c.n), 0)))
                      .scalar_one())  # fmt: skip
    with progress("reconciling", backlog or None) as advance:

        def ticked(part: TickResult) -> None:
            advance(part.records, f"applied {part.records} records, {part.judged} verdicts")

        result = reconcile(store, config, args.now, on_tick=ticked)
    print(
        f"reconciled {result.records} records ({result.batches} log rows): "
        f"{result.judged} verdicts ({time.monotonic() - started:.2f}s)",
        file=sys.stderr,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from msgtally.slis.read.figures import with_contracts
    from msgtally.slis.read.query import read_slis
    from msgtally.slis.read.report import error_notes, render_table, retry_notes
    from msgtally.slis.read.retry_configs import read_audit
    from msgtally.slis.read.windows import read_window_slis
    from msgtally.slis.spec.model import parse_duration
    from msgtally.store.db import open_store

    from .settings import settings_from_args

    settings = settings_from_args(args)
    spec = _spec(settings)
    try:
        since = None if args.since is None else parse_duration(args.since)
    except ValueError as exc:
        raise CommandError(f"--since: {exc}") from None
    store = open_store(settings.db, create=False)  # a report never makes a store
    with store.connect() as conn:
        figures = read_slis(conn) if since is None else read_window_slis(conn, time.time(), since)
        everything = with_contracts(figures, spec)
        audits = [
            a for a in read_audit(conn, time.time(), spec)
            if args.stream in (None, a.stream) and args.group in (None, a.group)
        ]  # fmt: skip
    slis = [
        s
        for s in everything
        if args.stream in (None, s.stream) and args.group in (None, s.group)
    ]
    if not slis and (args.stream is not None or args.group is not None):
        raise CommandError(_no_such(args, everything))
    if args.json:
        print(json.dumps([s.to_json() for s in slis], indent=2))
    else:
        print(render_table(slis, wide=args.wide, colour=_colour(sys.stdout)))
        notes = error_notes(slis)
        if notes:
            print("\n" + "\n".join(notes))
        notes = retry_notes(audits)
        if notes:
            print("\n" + "\n".join(notes))
        quarantine_commands.note_under_report(store)
    store.dispose()
    return 0


def _colour(out: object) -> bool:
    """Colours on a terminal, unless NO_COLOR is set (no-color.org)."""
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


def _no_such(args: argparse.Namespace, slis: Sequence[object]) -> str:
    """Which filter matched nothing, and what there is instead."""
    pairs = sorted({(s.stream, s.group) for s in slis})  # type: ignore[attr-defined]
    if not pairs:
        return "no figures yet for any stream (nothing reconciled)"
    if args.stream is not None and all(args.stream != stream for stream, _ in pairs):
        streams = ", ".join(sorted({stream for stream, _ in pairs}))
        return f"no figures for stream {args.stream!r} (streams with figures: {streams})"
    groups = ", ".join(g for st, g in pairs if args.stream in (None, st))
    return f"no figures for group {args.group!r} (groups: {groups})"


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(db=args.db or "msgtally-demo.db", seed=args.seed, ids=args.ids)


class _Parser(argparse.ArgumentParser):
    """argparse, but a closed stdout under --help or --version is a closed
    stdout (exit 141), not an error swallowed and an exit code 0."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            (file or sys.stderr).write(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="msgtally",
        description="Message delivery SLIs: joins produced and consumed message ids into "
        "delivered, lost, duplicated, retried, unexpected and latency figures.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log more; show tracebacks of errors"
    )
    parser.add_argument("--version", action="version", version=f"msgtally {__version__}")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    p = sub.add_parser(
        "serve",
        help="run the collector (and its reconcile loop)",
        description="Run the collector: POST /v1/records, POST /v1/traces (OTLP/HTTP), "
        "GET /v1/slis, /v1/discrepancies, /metrics, /healthz, /readyz; and OTLP/gRPC.",
    )
    _add_db(p)
    _add_reconcile(p)
    _add_spec(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8410)")
    p.add_argument(
        "--otlp-grpc-port", type=int, metavar="PORT", help="OTLP/gRPC port (default 4317)"
    )
    p.add_argument(
        "--no-otlp-grpc",
        action="store_true",
        help="no OTLP/gRPC server (OTLP/HTTP stays on POST /v1/traces)",
    )
    p.add_argument(
        "--no-reconcile",
        action="store_true",
        help="ingest only; run `msgtally reconcile --loop` elsewhere",
    )
    p.add_argument("--interval", type=float, help="seconds between engine ticks (default 0.5)")
    p.add_argument("--max-body", type=int, help="largest request body in bytes (default 8 MiB)")
    p.add_argument(
        "--max-inflight",
        type=int,
        help="bytes of request bodies held at once before 429 (default 256 MiB)",
    )
    p.add_argument(
        "--read-timeout", type=float, help="seconds for a request body to arrive (default 30)"
    )
    p.add_argument(
        "--max-series",
        type=int,
        help="(stream, group) names the store takes before refusing new ones "
        "(default 10000, at most 65535)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="require `Authorization: Bearer <token>` on every endpoint but /healthz, "
        "with one of the file's tokens (one a line, # comments); the file is read again "
        "on SIGHUP and when it changes (or MSGTALLY_TOKEN: one token)",
    )
    p.add_argument(
        "--metrics-open", action="store_true", help="with a token, leave /metrics open"
    )
    p.add_argument(
        "--ui-open", action="store_true",
        help="with a token, leave the status page (/) open; otherwise it asks for the token "
        "once and keeps it in a secure, HTTP-only cookie",
    )  # fmt: skip
    p.add_argument("--prometheus-url", metavar="URL",
                   help="a Prometheus with the generated rules: the status page shows the "
                   "alerts' state from its ALERTS series")  # fmt: skip
    p.add_argument("--grafana-url", metavar="URL",
                   help="the Grafana with the generated dashboards: the status page links them")
    p.add_argument("--trace-url", metavar="TEMPLATE",
                   help="a trace's address, {trace_id} filled in (Jaeger: http://jaeger:16686"
                   "/trace/{trace_id}): the status page links each id")  # fmt: skip
    kafka_commands.add_log(p, required=False)
    _add_logging(p)
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every HTTP request at INFO on msgtally.access (method, path, status, "
        "duration; default: MSGTALLY_ACCESS_LOG or off)",
    )
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
    _add_logging(p)
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser(
        "report",
        help="print the SLIs per stream and group",
        description="Print the SLIs per stream and consumer group, from the store:\n"
        "what the collector's engine has judged so far. Under the table: the failed\n"
        "records by error class, each stream's sends and each group's deliveries\n"
        f"({', '.join(ERROR_CLASSES)};\n"
        "with --json: each row's `errors`); the findings of the audit of the consumers'\n"
        "retry configurations (with --spec, those that contradict a delivery contract too).",
        epilog=report_legend(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_db(p)
    _add_spec(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON list, an object per stream and group (the fields of GET /v1/slis)",
    )
    p.add_argument("--stream", help="only this stream")
    p.add_argument("--group", help="only this consumer group")
    p.add_argument("--since", metavar="WINDOW",
                   help="the figures judged in this window (5m, 1h, 1d, 30d) instead of the "
                   "running totals (per-minute rows; per-hour past --retain)")  # fmt: skip
    p.add_argument("--wide", action="store_true",
                   help="every column (default: those an on-call reads first, within 100 "
                   "columns)")  # fmt: skip
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

    quarantine_commands.register(sub, _add_db)
    vacuum_command.register(sub, _add_db, _add_retain, _add_spec)
    kafka_commands.register(sub, _add_db, _add_reconcile, _add_logging)
    slo_commands.register(sub)
    return parser


# The exceptions beside CommandError that mean "the user can fix this": module, name.
_KNOWN_ERRORS = (
    ("msgtally.store.db", "StoreError"),
    ("msgtally.reconcile.lease", "LeaseHeld"),
    ("msgtally.settings", "SettingsError"),
    ("msgtally.store.kafka_log", "KafkaLogError"),
)


def _known_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the user can fix this", each printed as one line.

    Only those of loaded modules: one never imported cannot have been raised,
    and importing the collector just to name them added seconds to every
    failing command (`msgtally check` of a bad file).
    """
    known: list[type[BaseException]] = [CommandError]
    for module, name in _KNOWN_ERRORS:
        error = getattr(sys.modules.get(module), name, None)
        if error is not None:
            known.append(error)
    return tuple(known)


# The exit code when stdout closes early (`msgtally report | head -1`): what
# a shell reports for a command that SIGPIPE ended (128 + 13), as for `yes | head`.
EXIT_STDOUT_CLOSED = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; its exit code (docs/operations.md, "Exit codes")."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe cannot be caught
    except BrokenPipeError:
        return _stdout_closed()
    except SystemExit:  # argparse after --help, --version or a usage error
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _stdout_closed()
        raise
    return code


def _stdout_closed() -> int:
    """The reader of stdout has gone: stop quietly. What is still buffered
    goes nowhere (not a traceback at exit)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_STDOUT_CLOSED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
        return code
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        return _fail(
            args,
            exc,
            f"needs the {extra} extra ({exc.name} is not installed): "
            f"pip install 'msgtally[{extra}]'",
            1,
        )
    except _known_errors() as exc:
        return _fail(args, exc, str(exc), getattr(exc, "code", 1))
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, exc: BaseException, message: str, code: int) -> int:
    """One line on stderr, naming the command; the traceback only with -v."""
    if logs.json_configured():  # a collector logging JSON: its last words are JSON too
        logging.getLogger("msgtally").error(
            "msgtally %s: %s", args.command, message, exc_info=exc if args.verbose else None
        )
        return code
    if args.verbose:
        traceback.print_exception(exc)
    print(f"msgtally {args.command}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
