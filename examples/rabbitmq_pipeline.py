"""A producer and two consumer groups on RabbitMQ, measured by msgtally.

    pip install 'msgtally[rabbitmq]'
    msgtally serve --deadline 20 --settle 1 &      # a collector that judges quickly
    python examples/rabbitmq_pipeline.py

What it does, on a stream of its own (`orders-<random>`, or `--stream`):

- the producer service publishes `--messages` orders (100) to a fanout
  exchange with publisher confirms (`Publisher`): each is reported produced
  once the broker confirmed it;
- the `billing` group consumes with `acks="after"` (the default: the message
  is acked after the handler returns): every 10th order fails on its first
  delivery (`failed()`, or an exception: nacked, redelivered as attempt 2)
  and order 7 is poison (`dead_letter()`: rejected to the queue's
  dead-letter exchange);
- the `audit` group consumes with `acks="manual"`: the adapter only reports,
  and the handler acks itself, ten at a time (`basic_ack(multiple=True)`);
- then it waits for the collector's verdicts and prints the figures beside
  what it did itself.

Settings: `--collector` (MSGTALLY_COLLECTOR_URL, http://127.0.0.1:8410),
`--token` (MSGTALLY_TOKEN), `--amqp` (AMQP_URL,
amqp://guest:guest@127.0.0.1:5672/%2F), `--messages`, `--stream`, `--wait`.
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
    import pika

    from msgtally.ingest.shim.adapters.rabbitmq import Publisher, Received, tallied
except ModuleNotFoundError as missing:  # the shim alone: no broker client
    sys.exit(f"this example needs {missing.name}: pip install 'msgtally[rabbitmq]'")

FIGURES = ("produced", "delivered", "lost", "duplicated", "retried", "attempts",
           "dead_lettered", "consume_errors")  # fmt: skip


def arguments() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--collector", default=env("MSGTALLY_COLLECTOR_URL", "http://127.0.0.1:8410"),
                   help="the collector's URL (MSGTALLY_COLLECTOR_URL)")
    p.add_argument("--token", default=env("MSGTALLY_TOKEN"),
                   help="the collector's token, if it has one (MSGTALLY_TOKEN)")
    p.add_argument("--amqp", default=env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                   help="the broker (AMQP_URL)")
    p.add_argument("--messages", type=int, default=100, help="orders to publish (default 100)")
    p.add_argument("--stream", default=f"orders-{secrets.token_hex(3)}",
                   help="the stream (exchange) name; default: orders-<random>, new every run")
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


def main() -> int:
    args = arguments()
    stream, n = args.stream, args.messages
    if not collector_answers(args):
        return 1
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.amqp))
    except pika.exceptions.AMQPConnectionError as exc:
        print(f"cannot reach RabbitMQ at {args.amqp} (--amqp, AMQP_URL): {exc!r}", file=sys.stderr)
        return 1

    # The topology: a fanout exchange per stream, a queue per consumer group;
    # billing's rejects go to a dead-letter exchange and queue. Exclusive
    # queues: they go away with this script.
    setup = connection.channel()
    setup.exchange_declare(stream, "fanout", auto_delete=True)
    setup.exchange_declare(f"{stream}.dlx", "fanout", auto_delete=True)
    for queue, arguments_ in ((f"{stream}.billing", {"x-dead-letter-exchange": f"{stream}.dlx"}),
                              (f"{stream}.audit", None), (f"{stream}.dlq", None)):  # fmt: skip
        setup.queue_declare(queue, exclusive=True, arguments=arguments_)
    setup.queue_bind(f"{stream}.billing", stream)
    setup.queue_bind(f"{stream}.audit", stream)
    setup.queue_bind(f"{stream}.dlq", f"{stream}.dlx")

    # -- the consumer service: two groups, consuming before anything is published --
    consumer_tally = Tally(collector_url=args.collector, system="rabbitmq",
                           producer="example-consumer", token=args.token)  # fmt: skip
    fails_once = {f"order-{i}" for i in range(0, n, 10)}
    poison = "order-7" if n > 7 else None
    seen = {"billing": 0, "audit": 0, "failed": 0, "dead": 0, "ok": 0}

    def bill(msg: Received) -> None:
        seen["billing"] += 1
        if msg.message_id == poison:
            seen["dead"] += 1
            msg.dead_letter()  # rejected: the broker routes it to the dead-letter exchange
            return
        if msg.message_id in fails_once and msg.attempt == 1:
            seen["failed"] += 1
            # Nacked and requeued: redelivered as attempt 2. Raising does the same
            # (the adapter logs the traceback and does not re-raise it).
            msg.failed()
            return
        seen["ok"] += 1

    unacked: list[int] = []

    def audit(msg: Received) -> None:
        # acks="manual": the adapter reports the delivery; acking is ours, in batches.
        seen["audit"] += 1
        unacked.append(msg.method.delivery_tag)
        if len(unacked) == 10:
            msg.channel.basic_ack(unacked[-1], multiple=True)
            unacked.clear()

    consume = connection.channel()
    consume.basic_qos(prefetch_count=20)
    consume.basic_consume(f"{stream}.billing", tallied(consumer_tally, "billing", bill,
                                                       stream=stream, max_attempts=3))
    consume.basic_consume(f"{stream}.audit", tallied(consumer_tally, "audit", audit,
                                                     stream=stream, acks="manual"))

    # -- the producer service ----------------------------------------------------------
    producer_tally = Tally(collector_url=args.collector, system="rabbitmq",
                           producer="example-producer", token=args.token)  # fmt: skip
    publisher = Publisher(connection.channel(), producer_tally, exchange=stream, stream=stream)
    for i in range(n):
        # Waits for the broker's confirm; reported `ok` then (`error` if it raised).
        publisher.publish("", f'{{"order": {i}}}'.encode(), message_id=f"order-{i}")
        connection.process_data_events(time_limit=0)  # the consumers' turn (one connection)
    print(f"producer: published {n} orders to exchange {stream}, each confirmed by the broker")

    deadline = time.monotonic() + 60
    while seen["billing"] < n + len(fails_once) - (poison in fails_once) or seen["audit"] < n:
        if time.monotonic() > deadline:
            print(f"the broker did not deliver everything within 60 s: {seen}", file=sys.stderr)
            return 1
        connection.process_data_events(time_limit=0.1)
    if unacked:
        consume.basic_ack(unacked[-1], multiple=True)
    print(f'billing (acks="after"): {seen["billing"]} deliveries: {seen["ok"]} ok, '
          f'{seen["failed"]} failed once and were redelivered, {seen["dead"]} dead-lettered')
    print(f'audit (acks="manual", acked ten at a time): {seen["audit"]} deliveries, all ok')
    connection.close()

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
