"""A producer and two consumer groups on Kafka, measured by msgtally.

    pip install 'msgtally[kafka]'
    msgtally serve --deadline 20 --settle 1 &      # a collector that judges quickly
    python examples/kafka_pipeline.py

What it does, on a topic of its own (`orders-<random>`, 3 partitions, and its
dead-letter topic `<topic>.dlq`; or `--stream`):

- the producer service publishes `--messages` orders (100) with the
  idempotent producer, `acks=all` (`Publisher`): each is reported produced
  when its delivery report says the broker has it;
- the `billing` group consumes with `acks="after"` (the default: the offset
  is stored after the handler returns, committed every 5 s and on close):
  every 10th order fails on its first delivery (`failed()`, or an
  exception: the consumer seeks back and reads it again, attempt 2) and
  order 7 is poison (`dead_letter()`: produced to `<topic>.dlq`);
- the `audit` group consumes with `acks="manual"`: the adapter only reports,
  and the loop commits itself, synchronously, after each batch it read;
- then it waits for the collector's verdicts and prints the figures beside
  what it did itself.

Settings: `--collector` (MSGTALLY_COLLECTOR_URL, http://127.0.0.1:8410),
`--token` (MSGTALLY_TOKEN), `--bootstrap` (KAFKA_BOOTSTRAP_SERVERS,
127.0.0.1:9092), `--messages`, `--stream`, `--wait`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from typing import Any

import httpx

from msgtally import Tally

try:
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from msgtally.ingest.shim.adapters.kafka import Consumer, Publisher, Received
except ModuleNotFoundError as missing:  # the shim alone: no broker client
    sys.exit(f"this example needs {missing.name}: pip install 'msgtally[kafka]'")

FIGURES = ("produced", "delivered", "lost", "duplicated", "retried", "attempts",
           "dead_lettered", "consume_errors")  # fmt: skip


def arguments() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--collector", default=env("MSGTALLY_COLLECTOR_URL", "http://127.0.0.1:8410"),
                   help="the collector's URL (MSGTALLY_COLLECTOR_URL)")
    p.add_argument("--token", default=env("MSGTALLY_TOKEN"),
                   help="the collector's token, if it has one (MSGTALLY_TOKEN)")
    p.add_argument("--bootstrap", default=env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                   help="the brokers (KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--messages", type=int, default=100, help="orders to publish (default 100)")
    p.add_argument("--stream", default=f"orders-{secrets.token_hex(3)}",
                   help="the stream (topic) name; default: orders-<random>, new every run")
    p.add_argument("--wait", type=float, default=60,
                   help="seconds to wait for the collector's verdicts (default 60)")
    args = p.parse_args()
    if args.messages < 1:
        p.error(f"--messages: must be at least 1 (got {args.messages})")
    return args


def collector_answers(args: argparse.Namespace) -> bool:
    """Whether the collector is there and takes the token; if not, say what to do."""
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        status = httpx.get(f"{args.collector.rstrip('/')}/readyz", headers=headers).status_code
    except httpx.HTTPError as exc:
        print(f"cannot reach the collector at {args.collector} (--collector, "
              f"MSGTALLY_COLLECTOR_URL): {exc}; start one: msgtally serve --deadline 20 "
              "--settle 1", file=sys.stderr)  # fmt: skip
        return False
    if status == 401:
        print("the collector wants a token: --token or MSGTALLY_TOKEN", file=sys.stderr)
        return False
    return True


def create_topics(bootstrap: str, *names: str) -> None:
    """The topic and its dead-letter topic, 3 partitions each (if not there yet)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # warnings and up
    admin.list_topics(timeout=10)  # raises KafkaException when no broker answers
    made = admin.create_topics([NewTopic(n, num_partitions=3, replication_factor=1)
                                for n in names])  # fmt: skip
    for future in made.values():
        try:
            future.result(15)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def main() -> int:
    args = arguments()
    topic, n = args.stream, args.messages
    if not collector_answers(args):
        return 1
    try:
        create_topics(args.bootstrap, topic, f"{topic}.dlq")
    except (KafkaException, TimeoutError) as exc:
        print(f"cannot create topic {topic} at {args.bootstrap} (--bootstrap, "
              f"KAFKA_BOOTSTRAP_SERVERS): {exc!r}", file=sys.stderr)  # fmt: skip
        return 1
    config = {"bootstrap.servers": args.bootstrap}

    # -- the consumer service: two groups ----------------------------------------------
    consumer_tally = Tally(collector_url=args.collector, system="kafka",
                           producer="example-consumer", token=args.token)  # fmt: skip
    fails_once = {f"order-{i}" for i in range(0, n, 10)}
    poison = "order-7" if n > 7 else None
    seen = {"billing": 0, "audit": 0, "failed": 0, "dead": 0, "ok": 0}

    def bill(msg: Received) -> None:
        seen["billing"] += 1
        if msg.message_id == poison:
            seen["dead"] += 1
            msg.dead_letter()  # produced to <topic>.dlq, then its offset stored
            return
        if msg.message_id in fails_once and msg.attempt == 1:
            seen["failed"] += 1
            # The consumer seeks back: read again as attempt 2. Raising does the
            # same (the adapter logs the traceback and does not re-raise it).
            msg.failed()
            return
        seen["ok"] += 1

    def audit(msg: Received) -> None:
        seen["audit"] += 1  # acks="manual": the adapter reports; committing is ours

    group_config = {
        **config,
        "auto.offset.reset": "earliest",  # a group without offsets reads from the start
        # A member that dies is noticed within 6 s (librdkafka's default: 45 s).
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    }
    billing = Consumer(group_config, consumer_tally, "billing", [topic], bill, max_attempts=3)
    auditor = Consumer(group_config, consumer_tally, "audit", [topic], audit, acks="manual")
    # Join the groups before anything is produced, as running consumers would
    # have: an order's latency is then the pipeline's, not a group's start-up.
    deadline = time.monotonic() + 60
    while not (billing.consumer.assignment() and auditor.consumer.assignment()):
        if time.monotonic() > deadline:
            print("the consumers did not join their groups within 60 s", file=sys.stderr)
            return 1
        billing.read(timeout=0.2)
        auditor.read(timeout=0.2)

    # -- the producer service ----------------------------------------------------------
    producer_tally = Tally(collector_url=args.collector, system="kafka",
                           producer="example-producer", token=args.token)  # fmt: skip
    publisher = Publisher(config, producer_tally)
    for i in range(n):
        publisher.publish(topic, f'{{"order": {i}}}'.encode(), key=f"customer-{i % 7}",
                          message_id=f"order-{i}")  # fmt: skip
    if publisher.flush(30):  # the delivery reports: each produce reported ok (or error)
        print("the broker did not confirm every order within 30 s", file=sys.stderr)
        return 1
    print(f"producer: published {n} orders to topic {topic}, each confirmed by its "
          "delivery report")  # fmt: skip

    deadline = time.monotonic() + 60
    while seen["billing"] < n + len(fails_once) - (poison in fails_once) or seen["audit"] < n:
        if time.monotonic() > deadline:
            print(f"the broker did not deliver everything within 60 s: {seen}", file=sys.stderr)
            return 1
        billing.read(timeout=0.2)
        batch = auditor.read(timeout=0.2)
        if batch:  # the manual pattern: commit what this batch processed, then read on
            ends = {(r.topic, r.partition): r.offset + 1 for r in batch}
            offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
            auditor.consumer.commit(offsets=offsets, asynchronous=False)
    billing.close()  # commits what was processed, leaves the group, flushes the Tally
    auditor.close()
    print(f'billing (acks="after"): {seen["billing"]} deliveries: {seen["ok"]} ok, '
          f'{seen["failed"]} failed once and were read again, {seen["dead"]} dead-lettered '
          f"to {topic}.dlq")  # fmt: skip
    print(f'audit (acks="manual", committed after each batch): {seen["audit"]} deliveries, '
          "all ok")  # fmt: skip

    # -- what the collector says -------------------------------------------------------
    for tally in (producer_tally, consumer_tally):
        if not tally.flush(30):
            print("the collector did not take every record (see the log above)", file=sys.stderr)
            return 1
    return show_figures(args, n)


def show_figures(args: argparse.Namespace, n: int) -> int:
    """Wait until the collector has judged every order for both groups; print its figures."""
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    url = f"{args.collector.rstrip('/')}/v1/slis"
    print(f"waiting up to {args.wait:g} s for the verdicts (delivered ids at once, the others "
          "at first produce + deadline + settle) ...")  # fmt: skip
    deadline = time.monotonic() + args.wait
    while True:
        try:
            resp = httpx.get(url, params={"stream": args.stream}, headers=headers)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            print(f"cannot read the figures at {url} (--collector, MSGTALLY_COLLECTOR_URL; "
                  f"--token, MSGTALLY_TOKEN): {exc}", file=sys.stderr)  # fmt: skip
            return 1
        rows: list[dict[str, Any]] = sorted(resp.json(), key=lambda r: r["group"])
        judged = len(rows) == 2 and all(r["delivered"] + r["lost"] == n for r in rows)
        if judged or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"GET {url}?stream={args.stream}")
    print(f"{'group':<8}" + "".join(f"{name:>15}" for name in FIGURES))
    for r in rows:
        print(f"{r['group']:<8}" + "".join(f"{r[name]:>15}" for name in FIGURES))
    if not judged:
        print("not every order is judged yet: run the collector with --deadline 20 --settle 1 "
              "to see the verdicts at once, or look later (`msgtally report --stream "
              f"{args.stream}`)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
