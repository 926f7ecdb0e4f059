"""Per-delivery cost of the retry-configuration announcement, in ns.

Every adapter consumer calls `announce(stream)` on each delivery (its stream
may be known only from the message): a set lookup once the stream is
announced. The first call per stream (the name checks, the shipper's dict)
is printed too, informative. Measured with timeit, best of many rounds of 10,000
calls, the cases interleaved so that noise from the rest of the machine
falls on all of them alike.

The reference, in the same run and process: `Tally.consumed` with tracing off
(counters and the record only), the cheapest thing a delivery costs the shim.
Goal: the announcement <= 0.1x the reference. The shipper stays idle (no
collector): the caller's cost alone.

Example: python bench/announce_cost.py
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

from _common import log, machine_busy
from prometheus_client import CollectorRegistry

from msgtally.ingest.shim.adapters.common import RetryPolicy, Tallied
from msgtally.ingest.shim.tally import Tally

GOAL_RATIO = 0.1
STREAM, GROUP = "orders", "billing"
CALLS = 10_000  # per round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds per case (best kept)")
    args = parser.parse_args(argv)

    tally = Tally(
        collector_url="http://127.0.0.1:9", registry=CollectorRegistry(), tracing=False,
        batch_size=10**7, max_buffer=10**7, flush_interval=3600,
    )  # fmt: skip
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=30.0, jitter=True, dead_letter="dlq")
    consumer = Tallied(tally, GROUP, lambda r: None, None, "after", 5, policy)
    consumer.announce(STREAM)  # the first one queues it; every later one is the check
    fresh = Tallied(tally, GROUP, lambda r: None, None, "after", 5, policy)

    def first() -> None:  # what the first delivery of a stream pays (informative)
        fresh._announced.clear()
        fresh.announce(STREAM)

    cases: dict[str, Callable[[], object]] = {
        "(empty lambda)": lambda: None,
        "reference: Tally.consumed, tracing off": lambda: tally.consumed(
            "m", group=GROUP, stream=STREAM
        ),
        "announce(stream), unchanged": lambda: consumer.announce(STREAM),
        "announce(stream), first of a stream": first,
    }
    best = dict.fromkeys(cases, float("inf"))
    busy0 = machine_busy()
    for i in range(args.rounds):
        for name, fn in cases.items():
            tally.shipper._buffer.clear()  # flat memory: the records are not shipped
            best[name] = min(best[name], timeit.timeit(fn, number=CALLS) / CALLS * 1e9)
        if not i % 10:
            log(f"round {i + 1}/{args.rounds}")
    busy1 = machine_busy()
    tally.close(0.1)

    empty = best["(empty lambda)"]
    net = {name: ns - empty for name, ns in best.items()}
    load = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    print(f"\nannounce_cost: python {sys.version.split()[0]}, {os.cpu_count()} cpus, machine "
          f"busy {load:.0%} during the run, best of {args.rounds} x {CALLS:,} calls")  # fmt: skip
    print(f"\n  {'case':<44} {'ns/call':>8} {'net':>8}")
    for name, ns in best.items():
        print(f"  {name:<44} {ns:>8.0f} {net[name]:>8.0f}")
    ratio = net["announce(stream), unchanged"] / net["reference: Tally.consumed, tracing off"]
    verdict = "met" if ratio <= GOAL_RATIO else "MISSED"
    print(f"\nannounce / reference (net of the lambda): {ratio:.3f}x "
          f"(goal <= {GOAL_RATIO}x): {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())
