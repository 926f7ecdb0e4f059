"""`msgtally topic create` and `msgtally worker`: the engine past one machine,
on a Kafka log (docs/scaling.md). `msgtally serve --log` is the collector's side."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("msgtally")

# Defaults of `topic create`, here so building the parser loads no store module.
DEFAULT_PARTITIONS = 64  # the unit of rescaling: at most this many workers share the work
DEFAULT_RETENTION_MS = 7 * 86_400_000  # what the topic keeps (workers replay from it)

LOG_HELP = (
    "the log on Kafka, kafka://HOST:PORT/TOPIC (several brokers: HOST:PORT,HOST:PORT): "
    "collectors append accepted requests to it, workers reconcile it"
)


def add_log(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--log", metavar="URL", required=required, help=LOG_HELP)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_db: Callable[[argparse.ArgumentParser], None],
    add_reconcile: Callable[[argparse.ArgumentParser], None],
    add_logging: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "topic",
        help="the Kafka log's topic: create it",
        description="Create the topic of the Kafka log that collectors (serve --log) "
        "append to and workers (worker --log) reconcile.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser(
        "create",
        help="create the topic",
        description="Create the topic. Its partition count is fixed for the life of the "
        "store (ids are hashed over it): it bounds how many workers share the work.",
    )
    add_log(create, required=True)
    create.add_argument(
        "--partitions", type=_positive, default=DEFAULT_PARTITIONS,
        help=f"partitions: at most this many workers share the work (default "
        f"{DEFAULT_PARTITIONS})",
    )  # fmt: skip
    create.add_argument(
        "--retention-ms", type=_positive, default=DEFAULT_RETENTION_MS,
        help="how long the topic keeps messages, in milliseconds (default 7 days): longer "
        "than a worker's checkpoints are apart, and than the back-fill of a new group needs",
    )  # fmt: skip
    create.add_argument(
        "--replication", type=_positive, default=1,
        help="replicas of each partition (default 1; 3 on a production cluster)",
    )  # fmt: skip
    create.set_defaults(func=cmd_topic_create)

    w = sub.add_parser(
        "worker",
        help="reconcile the Kafka log: one process per core, in one consumer group",
        description="Run the reconcile engine over the Kafka log: the workers of one "
        "topic share its partitions (Kafka's consumer group), one state machine each; "
        "each partition's figures are committed with its offset in the store. Start one "
        "per core, on any machines; the collectors (serve --log) read the figures.",
    )
    add_db(w)
    add_reconcile(w)
    add_log(w, required=True)
    w.add_argument(
        "--commit-every", type=float, default=0.5, metavar="SECONDS",
        help="seconds between a worker's commits to the store (default 0.5); while it is "
        "behind, 4 times as long as the last commit took, if longer, up to 10",
    )  # fmt: skip
    w.add_argument(
        "--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
        help="seconds between a partition's checkpoints (default 60): a worker that takes "
        "the partition replays the topic from the last one",
    )  # fmt: skip
    w.add_argument(
        "--session-timeout", type=float, default=10.0, metavar="SECONDS",
        help="seconds without a worker's heartbeats before its partitions move to the "
        "others (default 10); a stopped worker's move after it too, unless --leave-group",
    )  # fmt: skip
    w.add_argument(
        "--leave-group", action="store_true",
        help="on SIGTERM, after the last commit, leave the consumer group so that the "
        "partitions move at once (default: exit without leaving; they move after "
        "--session-timeout, as a crashed worker's do; Tansu 0.6.0 mishandles leaves)",
    )  # fmt: skip
    add_logging(w)
    w.set_defaults(func=cmd_worker)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def cmd_topic_create(args: argparse.Namespace) -> int:
    from msgtally.store.kafka_log import create_topic, parse_log_url

    where = parse_log_url(args.log)
    create_topic(where, args.partitions, args.retention_ms, args.replication)
    print(f"created {where} with {args.partitions} partitions")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from msgtally.reconcile.partitioned.worker import Worker
    from msgtally.store.db import open_store
    from msgtally.store.kafka_log import open_log

    from . import logs
    from .settings import settings_from_args

    settings = settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    store = open_store(settings.db)
    where, count = open_log(store, args.log)
    worker = Worker(
        store, where, settings.reconcile_config(), commit_every=args.commit_every,
        checkpoint_every=args.checkpoint_every, session_timeout=args.session_timeout,
        leave_group=args.leave_group,
    )  # fmt: skip
    worker.check_replayable(count)  # a store the topic cannot rebuild: refused

    def stop(_sig: int, _frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("msgtally worker %s on %s (%d partitions), store %s", worker.owner, where, count,
             store.url.render_as_string(hide_password=True))  # fmt: skip
    worker.run()
    if not args.leave_group:
        # Every partition committed. Ending the process without destroying the
        # consumer: librdkafka's destroy would leave the group (see Worker.run).
        log.info("msgtally worker %s stopped; its partitions move after its session",
                 worker.owner)  # fmt: skip
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
