"""Per-message cost of the Kafka adapter against bare confluent-kafka calls.

A Kafka-protocol broker (Tansu, from the test extra; see tests/kafka_broker.py)
runs on 127.0.0.1 for the run. Cases, interleaved in rounds so that noise
from the rest of the machine falls on all of them alike:

  produce, bare       Producer.produce(topic, value, key, headers=[id header],
                      on_delivery=callback) and poll(0) per record, then flush():
                      what a service does by hand
  produce, wrapped    kafka.Publisher.publish(topic, value, key=, message_id=)
                      (the same producer settings: idempotent, acks=all), then
                      flush(): reported from each delivery report
  consume, bare       Consumer.consume(500) and store_offsets() per record
                      (at least once by hand)
  consume, wrapped    kafka.Consumer.read(500) with a handler that returns:
                      read the id and trace context, report, run, store the offset

The consuming cases read, each round with a fresh group, the same records:
a topic filled once before the rounds by the wrapped publisher (traced), so
each record carries its id and trace context headers.

The wrapped cases run with tracing off (Tally(tracing=False): counter and
record) and on (an OpenTelemetry SDK TracerProvider with a batch processor
and a no-op exporter, as a traced service has). The shipper stays idle (its
records are discarded between rounds), as in bench/shim_cost.py: the
caller's cost alone.

Figures: CPU time of the calling thread per record (time.thread_time: the
Python side, delivery callbacks included; librdkafka's own threads do the
same work in every case), and wall time per record; both summed over
stretches of 500 records, between which the shim's queued records are
discarded untimed (the consume cases' first record, the group join, is not
timed). The median over rounds; the ratio is wrapped / bare. Every case
checks its count: every record confirmed, or read and reported ok.

Example: python bench/kafka_cost.py
         python bench/kafka_cost.py --records 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import log, machine_busy, scratch_dir
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as RawProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from msgtally.ingest.shim.adapters.kafka import PRODUCER_DEFAULTS, Consumer, Publisher, Received
from msgtally.ingest.shim.tally import MESSAGE_ID_HEADER, Tally

# The broker the Kafka adapter's tests start, from the repository's tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kafka_broker import Tansu

PARTITIONS = 3
DRAIN_EVERY = 500  # records between drains of the shim: its default batch size
Timing = tuple[float, float]  # thread CPU s, wall s
Produce = Callable[[list[str]], Timing]  # the ids to produce
Consume = Callable[[int], Timing]  # how many records to read


class NoopExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def idle_tally(provider: TracerProvider | None) -> Tally:
    """A Tally whose shipper never wakes; `discard` empties it between rounds."""
    return Tally(
        collector_url="http://127.0.0.1:9",
        system="kafka",
        tracer_provider=provider,
        tracing=provider is not None,
        batch_size=10**8,
        max_buffer=10**8,
        flush_interval=3600.0,
    )


def discard(tally: Tally) -> None:
    with tally.shipper._lock:
        tally.shipper._buffer.clear()


class Clock:
    """CPU of this thread and wall time, summed over the timed stretches only."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Clock:
        self._cpu, self._wall = time.thread_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.thread_time() - self._cpu
        self.wall += time.perf_counter() - self._wall


Delivered = Callable[[KafkaError | None, Message], None]


def producing(
    send: Callable[[str, Delivered], object], flush: Callable[[float], int], tally: Tally | None
) -> Produce:
    """A produce case: `send(id, on_delivery)` per record, then `flush`."""

    def run(ids: list[str]) -> Timing:
        ok: list[bool] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            ok.append(err is None)

        clock = Clock()
        for start in range(0, len(ids), DRAIN_EVERY):
            with clock:
                for mid in ids[start : start + DRAIN_EVERY]:
                    send(mid, delivered)
            if tally is not None:
                discard(tally)  # outside the timed stretch: a shipper that keeps up
        with clock:
            assert flush(60) == 0
        if tally is not None:
            discard(tally)
        assert ok == [True] * len(ids), "a produce was not confirmed"
        return clock.cpu, clock.wall

    return run


def produce_bare(bootstrap: str, topic: str) -> Produce:
    producer = RawProducer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS})

    def send(mid: str, delivered: Delivered) -> None:
        headers = [(MESSAGE_ID_HEADER, mid.encode())]
        producer.produce(topic, mid.encode(), mid.encode(), headers=headers, on_delivery=delivered)
        producer.poll(0)

    return producing(send, producer.flush, None)


def produce_wrapped(bootstrap: str, topic: str, tally: Tally) -> Produce:
    publisher = Publisher({"bootstrap.servers": bootstrap}, tally)

    def send(mid: str, delivered: Delivered) -> None:
        publisher.publish(
            topic, mid.encode(), key=mid.encode(), message_id=mid, on_delivery=delivered
        )

    return producing(send, publisher.flush, tally)


def consume_bare(bootstrap: str, topic: str) -> Consume:
    def run(n: int) -> Timing:
        consumer = RawConsumer(group_config(bootstrap))
        consumer.subscribe([topic])
        seen, clock = 0, Clock()
        while not seen:  # the group join, not timed
            for msg in consumer.consume(1, 1.0):
                if msg.error() is None:
                    consumer.store_offsets(msg)
                    seen += 1
        while seen < n:
            with clock:
                for msg in consumer.consume(DRAIN_EVERY, 1.0):
                    if msg.error() is None:
                        consumer.store_offsets(msg)
                        seen += 1
        consumer.close()
        assert seen == n
        return clock.cpu, clock.wall

    return run


def consume_wrapped(bootstrap: str, topic: str, tally: Tally) -> Consume:
    def run(n: int) -> Timing:
        consumer = Consumer(group_config(bootstrap), tally, fresh_group(), [topic], handle)
        seen, clock = 0, Clock()
        while not seen:  # the group join, not timed
            seen += len(consumer.read(1, 1.0))
        while seen < n:
            with clock:
                got = consumer.read(DRAIN_EVERY, 1.0)
            seen += sum(1 for r in got if r.outcome == "ok")
            discard(tally)  # outside the timed stretch: a shipper that keeps up
        consumer.consumer.close()  # not close(): the Tally has no collector to flush to
        discard(tally)
        assert seen == n
        return clock.cpu, clock.wall

    return run


def handle(_msg: Received) -> None:
    """The handler of every wrapped consume: returns, so the record is ok."""


def fresh_group() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def group_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": fresh_group(),
        "auto.offset.reset": "earliest",
        "enable.auto.offset.store": False,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=20_000, help="records per case and round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    ap.add_argument("--keep", metavar="DIR", help="work directory to keep (broker log)")
    args = ap.parse_args(argv)

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoopExporter(), max_queue_size=10**6))
    plain, traced = idle_tally(None), idle_tally(provider)
    with scratch_dir(args.keep) as work, Tansu(work / "tansu.log") as broker:
        names = ("bare", "wrapped", "source")
        topics = {name: f"bench-{name}-{uuid.uuid4().hex[:6]}" for name in names}
        broker.create_topics(*topics.values(), partitions=PARTITIONS)
        b = broker.bootstrap
        produce_wrapped(b, topics["source"], traced)(ids_for("source", args.records))
        produce: dict[str, Produce] = {
            "produce, bare": produce_bare(b, topics["bare"]),
            "produce, wrapped, tracing off": produce_wrapped(b, topics["wrapped"], plain),
            "produce, wrapped, tracing on": produce_wrapped(b, topics["wrapped"], traced),
        }
        consume: dict[str, Consume] = {
            "consume, bare": consume_bare(b, topics["source"]),
            "consume, wrapped, tracing off": consume_wrapped(b, topics["source"], plain),
            "consume, wrapped, tracing on": consume_wrapped(b, topics["source"], traced),
        }
        samples: dict[str, list[Timing]] = {n: [] for n in [*produce, *consume]}
        busy0 = machine_busy()
        start = time.monotonic()
        for r in range(args.rounds):
            for name, producing in produce.items():
                samples[name].append(producing(ids_for(str(r), args.records)))
                provider.force_flush()
            for name, consuming in consume.items():
                samples[name].append(consuming(args.records))
                provider.force_flush()
            log(f"round {r + 1}/{args.rounds} done")
        wall = time.monotonic() - start
        busy1 = machine_busy()
    plain.close(0.1)
    traced.close(0.1)
    provider.shutdown()

    load = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    print(
        f"\nKafka adapter per-record cost: {args.rounds} rounds x {args.records:,} records per "
        f"case, {PARTITIONS} partitions, Tansu on 127.0.0.1, {wall:.0f} s, machine busy "
        f"{load:.0%} of {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    per: dict[str, Timing] = {}
    print(f"\n  {'case':<34} {'CPU us/record':>14} {'wall us/record':>15}  (median of rounds)")
    for name, rounds in samples.items():
        cpu = statistics.median(c for c, _ in rounds) / args.records * 1e6
        wall_us = statistics.median(w for _, w in rounds) / args.records * 1e6
        per[name] = (cpu, wall_us)
        print(f"  {name:<34} {cpu:>14.2f} {wall_us:>15.2f}")
    print("\nratio wrapped / bare (CPU of the calling thread; wall):")
    for side in ("produce", "consume"):
        bare = per[f"{side}, bare"]
        for tracing in ("off", "on"):
            got = per[f"{side}, wrapped, tracing {tracing}"]
            print(
                f"  {side}, tracing {tracing:<3}  CPU {got[0] / bare[0]:5.2f}x "
                f"(+{got[0] - bare[0]:.1f} us)   wall {got[1] / bare[1]:5.2f}x"
            )
    return 0


def ids_for(label: str, n: int) -> list[str]:
    return [f"{label}-{i:08d}-{uuid.uuid4().hex[:8]}" for i in range(n)]


if __name__ == "__main__":
    sys.exit(main())
