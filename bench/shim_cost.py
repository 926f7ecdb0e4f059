"""Per-call cost of the shim: Tally.produced and Tally.consumed, in ns.

Every call is timed on its own with time.perf_counter_ns (>= 100,000 calls
per case after a warm-up), the cases interleaved in rounds so that noise
from the rest of the machine falls on all of them alike. Figures are p50 and
p99 net of the timer's floor (an empty timed statement, printed), both
pooled over every call and for the quietest round (the lowest per-round
percentile): on a shared machine preemptions land in the pooled tail, and
the quietest round is the closest to the shim's own cost. Goals are judged
on the quietest round; both are printed.

The reference, in the same run and process: what a service instrumented by
hand would pay per message, a bare OpenTelemetry SDK span (TracerProvider
with a BatchSpanProcessor and a no-op exporter, the provider the Tally uses)
with the same attributes as the shim's span (4 for a send, 5 for a process),
started and ended, plus one pre-bound prometheus-client counter inc().
Goals: produced and consumed <= 1.5x the reference at p50 and p99; with
tracing off (Tally(tracing=False): counters + record only) <= 2 us.

`consumed` is measured as consumers call it, with the producer's headers
(trace context extracted, producer span linked), and without headers. For
the former a second, informative reference adds what a semconv-complete
hand-made consumer span pays too: the extract and the link.

Shipping modes:
  idle       (default) the shipper thread stays idle: every 500 calls,
             outside the timed statement, the queued records are discarded
             and the spans exported, so memory stays flat as in a service
             whose shipper keeps up. The caller's cost alone.
  collector  a real collector in its own process, default batching (500
             records or 1 s): the shipper thread encodes and posts while the
             calls run (GIL, wake-ups); its CPU per record shipped is printed.

--profile times the pieces a call is made of (timeit), to say where the
time goes. --no-gc turns the cyclic GC off while timing (its share of the tail).

Example: python bench/shim_cost.py
         python bench/shim_cost.py --mode collector --profile
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import timeit
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import CollectorProcess, log, machine_busy, scratch_dir
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind
from prometheus_client import CollectorRegistry, Counter

from msgtally.ingest.shim import tracing as tr
from msgtally.ingest.shim.tally import Tally

GOAL_RATIO = 1.5
GOAL_UNTRACED_NS = 2000
STREAM, GROUP, SYSTEM = "orders", "billing", "rabbitmq"

REF_SEND = "reference send (span 4 attrs + inc)"
REF_PROCESS = "reference process (span 5 attrs + inc)"
REF_LINKED = "reference process + extract + link"
Drain = Callable[[], None]
Loop = Callable[[Sequence[str], array, Drain], None]  # (message ids, out timings, drain)
DRAIN_EVERY = 500  # calls between drains: the shipper's default batch size


class NoopExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def provider(queue: int) -> TracerProvider:
    # A queue that fills logs a warning per span dropped, which would be
    # timed: it holds a round's spans. Rounds end with force_flush().
    p = TracerProvider()
    p.add_span_processor(BatchSpanProcessor(NoopExporter(), max_queue_size=queue))
    return p


# -- the timed loops: one statement timed per iteration, no wrapper call ------------


def timer_floor(ids: Sequence[str], out: array, drain: Drain) -> None:
    pc = time.perf_counter_ns
    for i in range(len(ids)):
        t0 = pc()
        out[i] = pc() - t0
        if not i % DRAIN_EVERY:
            drain()  # outside the timed statement


def reference_send(tp: TracerProvider, registry: CollectorRegistry) -> Loop:
    tracer = tp.get_tracer("reference")
    child = Counter("ref_produced", "", ("stream", "outcome"), registry=registry).labels(
        STREAM, "ok"
    )
    name, start, producer, inc = f"send {STREAM}", tracer.start_span, SpanKind.PRODUCER, child.inc

    def loop(ids: Sequence[str], out: array, drain: Drain) -> None:
        pc = time.perf_counter_ns
        for i, mid in enumerate(ids):
            t0 = pc()
            start(
                name,
                kind=producer,
                attributes={
                    tr.SYSTEM: SYSTEM,
                    tr.DESTINATION: STREAM,
                    tr.MESSAGE_ID: mid,
                    tr.OPERATION_TYPE: "send",
                },
            ).end()
            inc()
            out[i] = pc() - t0
            if not i % DRAIN_EVERY:
                drain()  # outside the timed statement

    return loop


def reference_process(tp: TracerProvider, registry: CollectorRegistry) -> Loop:
    tracer = tp.get_tracer("reference")
    child = Counter("ref_consumed", "", ("stream", "group", "outcome"), registry=registry).labels(
        STREAM, GROUP, "ok"
    )
    name, start, consumer, inc = (
        f"process {STREAM}",
        tracer.start_span,
        SpanKind.CONSUMER,
        child.inc,
    )

    def loop(ids: Sequence[str], out: array, drain: Drain) -> None:
        pc = time.perf_counter_ns
        for i, mid in enumerate(ids):
            t0 = pc()
            start(
                name,
                kind=consumer,
                attributes={
                    tr.SYSTEM: SYSTEM,
                    tr.DESTINATION: STREAM,
                    tr.MESSAGE_ID: mid,
                    tr.OPERATION_TYPE: "process",
                    tr.CONSUMER_GROUP: GROUP,
                },
            ).end()
            inc()
            out[i] = pc() - t0
            if not i % DRAIN_EVERY:
                drain()  # outside the timed statement

    return loop


def reference_process_linked(
    tp: TracerProvider, registry: CollectorRegistry, headers: dict[str, str]
) -> Loop:
    """The semconv-complete hand-made consumer span: context extracted, link."""
    tracer = tp.get_tracer("reference")
    child = Counter("ref_linked", "", ("stream", "group", "outcome"), registry=registry).labels(
        STREAM, GROUP, "ok"
    )
    name, start, consumer, inc = (
        f"process {STREAM}",
        tracer.start_span,
        SpanKind.CONSUMER,
        child.inc,
    )
    extract, current = propagate.extract, trace.get_current_span

    def loop(ids: Sequence[str], out: array, drain: Drain) -> None:
        pc = time.perf_counter_ns
        for i, mid in enumerate(ids):
            t0 = pc()
            start(
                name,
                kind=consumer,
                links=[Link(current(extract(headers)).get_span_context())],
                attributes={
                    tr.SYSTEM: SYSTEM,
                    tr.DESTINATION: STREAM,
                    tr.MESSAGE_ID: mid,
                    tr.OPERATION_TYPE: "process",
                    tr.CONSUMER_GROUP: GROUP,
                },
            ).end()
            inc()
            out[i] = pc() - t0
            if not i % DRAIN_EVERY:
                drain()  # outside the timed statement

    return loop


def produced(tally: Tally) -> Loop:
    call = tally.produced

    def loop(ids: Sequence[str], out: array, drain: Drain) -> None:
        pc = time.perf_counter_ns
        for i, mid in enumerate(ids):
            t0 = pc()
            call(mid)
            out[i] = pc() - t0
            if not i % DRAIN_EVERY:
                drain()  # outside the timed statement

    return loop


def consumed(tally: Tally, headers: dict[str, str] | None) -> Loop:
    call = tally.consumed

    def loop(ids: Sequence[str], out: array, drain: Drain) -> None:
        pc = time.perf_counter_ns
        for i, mid in enumerate(ids):
            t0 = pc()
            call(mid, group=GROUP, headers=headers)
            out[i] = pc() - t0
            if not i % DRAIN_EVERY:
                drain()  # outside the timed statement

    return loop


# -- running and reporting ------------------------------------------------------------


def run_cases(
    cases: dict[str, Loop], drain: Drain, between: Drain, calls: int, rounds: int, warmup: int
) -> dict[str, list[array]]:
    """Per case, the timings of each round."""
    per_round = calls // rounds
    ids = [f"{i:032x}" for i in range(per_round)]  # uuid4-hex-like, made up front
    out: dict[str, list[array]] = {name: [] for name in cases}
    warm = array("q", bytes(8 * warmup))
    for loop in cases.values():  # warm-up: caches, counters' children, code paths
        loop(ids[:warmup], warm, drain)
    between()
    for r in range(rounds):
        for name, loop in cases.items():
            buf = array("q", bytes(8 * per_round))
            loop(ids, buf, drain)
            out[name].append(buf)
        between()  # spans exported; records shipped (collector) or discarded (idle)
        if (r + 1) % 5 == 0:
            log(f"round {r + 1}/{rounds} done")
    return out


def thread_cpu_seconds(native_id: int | None) -> float:
    """User + system CPU of one thread of this process (Linux /proc)."""
    if native_id is None:
        return float("nan")
    try:
        stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except FileNotFoundError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(tp: TracerProvider) -> None:
    """Where a produced() call spends its time, piece by piece (timeit, ns/op)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    registry = CollectorRegistry()
    tally = Tally(
        STREAM,
        collector_url="http://127.0.0.1:9",
        system=SYSTEM,
        registry=registry,
        tracer_provider=tp,
        batch_size=10**7,
        max_buffer=10**7,
        flush_interval=3600,
    )
    tracer = tp.get_tracer("pieces")
    span = tracer.start_span("x")
    span.end()
    prop = TraceContextTextMapPropagator()
    ctx = trace.set_span_in_context(span)
    headers: dict[str, str] = {}
    prop.inject(headers, context=ctx)
    child = Counter("pieces", "", ("s",), registry=registry).labels("a")
    mtracer = tally._tracer
    assert mtracer is not None
    row = (STREAM, "produce", "m", 1.0, "", 1, "ok", "p", 1, None, None, "r:1")
    tally.shipper.put(row)  # starts the (idle) thread
    attrs4 = {tr.SYSTEM: SYSTEM, tr.DESTINATION: STREAM, tr.MESSAGE_ID: "m", tr.OPERATION_TYPE: "s"}
    attrs5 = {**attrs4, tr.CONSUMER_GROUP: GROUP}
    attrs6 = {**attrs5, tr.ATTEMPT: 1}
    parent = span.get_span_context()
    pieces: list[tuple[str, Callable[[], object]]] = [
        (
            "span start+end, 4 attributes",
            lambda: tracer.start_span("send o", attributes=attrs4).end(),
        ),
        (
            "MessagingTracer.send (span + traceparent)",
            lambda: mtracer.send(STREAM, "m", {})[0].end(),
        ),
        ("  (propagator inject, for comparison)", lambda: prop.inject({}, context=ctx)),
        ("  of which set_span_in_context", lambda: trace.set_span_in_context(span)),
        ("span_ids (two format() to hex)", lambda: tr.span_ids(span)),
        ("span start+end, 5 attributes", lambda: tracer.start_span("p o", attributes=attrs5).end()),
        ("span start+end, 6 attributes", lambda: tracer.start_span("p o", attributes=attrs6).end()),
        (
            "span start+end, 6 attributes + 1 link",
            lambda: tracer.start_span("p o", attributes=attrs6, links=[Link(parent)]).end(),
        ),
        ("  of which Link(...) itself", lambda: Link(parent)),
        (
            "MessagingTracer.process + link",
            lambda: mtracer.process(STREAM, "m", GROUP, 1, headers).end(),
        ),
        ("  of which parse traceparent", lambda: tr.parse_traceparent(headers["traceparent"])),
        ("  (propagator extract, for comparison)", lambda: prop.extract(headers)),
        ("counter child inc()", child.inc),
        ("time.time()", time.time),
        ("f-string record id + next()", lambda: f"{tally.instance}:{next(tally._record_n)}"),
        ("Shipper.put (lock, deque, event)", lambda: tally.shipper.put(row)),
        ("Tally.produced, tracing on", lambda: tally.produced("m")),
        (
            "Tally.consumed, headers, tracing on",
            lambda: tally.consumed("m", group=GROUP, headers=headers),
        ),
    ]
    untraced = Tally(
        STREAM,
        collector_url="http://127.0.0.1:9",
        registry=registry,
        tracing=False,
        batch_size=10**7,
        max_buffer=10**7,
        flush_interval=3600,
    )
    pieces.append(("Tally.produced, tracing off", lambda: untraced.produced("m")))
    pieces.append(("Tally.consumed, tracing off", lambda: untraced.consumed("m", group=GROUP)))

    def drain() -> None:  # as in the timed run: flat memory, spans exported
        tp.force_flush()
        tally.shipper._buffer.clear()
        untraced.shipper._buffer.clear()

    def best_ns(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(40):
            drain()
            best = min(best, timeit.timeit(fn, number=DRAIN_EVERY))
        return best / DRAIN_EVERY * 1e9

    print(
        f"\nWhere the time goes (timeit: best of 40 x {DRAIN_EVERY} calls, ns per call, "
        "the lambda's call included):"
    )
    print(f"  {'(empty lambda)':<40} {best_ns(lambda: None):>8.0f}")
    for name, fn in pieces:
        print(f"  {name:<40} {best_ns(fn):>8.0f}")
    tally.close(0.1)
    untraced.close(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=200_000, help="timed calls per case (200,000)")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    ap.add_argument("--warmup", type=int, default=20_000, help="untimed calls per case first")
    ap.add_argument("--mode", choices=("idle", "collector"), default="idle")
    ap.add_argument("--no-gc", action="store_true", help="cyclic GC off while timing")
    ap.add_argument("--profile", action="store_true", help="also time the pieces of a call")
    ap.add_argument("--keep", metavar="DIR", help="work directory to keep (collector log)")
    args = ap.parse_args(argv)
    if args.calls < 100_000:
        ap.error("--calls: at least 100,000 timed calls per case")
    per_round = args.calls // args.rounds

    tp = provider(queue=max(2048, 6 * max(per_round, args.warmup)))
    registry = CollectorRegistry()
    with scratch_dir(args.keep) as work:
        collector: CollectorProcess | None = None
        if args.mode == "collector":
            collector = CollectorProcess(f"sqlite:///{work / 'bench.db'}", work / "collector.log")
            collector.__enter__()
            url, batching = collector.url, {}
        else:
            # Nobody listens and the thread never wakes: every DRAIN_EVERY
            # calls, outside the timed statement, the records are discarded
            # and the spans exported, so memory stays as flat as in a service
            # whose shipper keeps up (a growing buffer adds page faults and
            # allocator work to the tail).
            url = "http://127.0.0.1:9"
            batching = {"batch_size": 10**7, "max_buffer": 10**7, "flush_interval": 3600.0}
        common: dict[str, Any] = {"collector_url": url, "system": SYSTEM, **batching}
        traced_tally = Tally(STREAM, registry=registry, tracer_provider=tp, **common)
        plain_tally = Tally(STREAM, registry=registry, tracing=False, **common)
        tallies = [traced_tally, plain_tally]

        def drain() -> None:
            if args.mode == "idle":
                tp.force_flush()
                for t in tallies:
                    with t.shipper._lock:
                        t.shipper._buffer.clear()

        def between() -> None:
            tp.force_flush()
            for t in tallies:
                if args.mode == "collector":
                    t.flush(60)
            drain()

        headers = dict(traced_tally.produced("seed"))
        cases: dict[str, Loop] = {
            "timer floor": timer_floor,
            REF_SEND: reference_send(tp, registry),
            REF_PROCESS: reference_process(tp, registry),
            REF_LINKED: reference_process_linked(tp, registry, headers),
            "produced": produced(traced_tally),
            "consumed, with headers (link)": consumed(traced_tally, headers),
            "consumed, no headers": consumed(traced_tally, None),
            "produced, tracing off": produced(plain_tally),
            "consumed, tracing off": consumed(plain_tally, None),
        }
        gc.collect()
        if args.no_gc:
            gc.disable()
        busy0 = machine_busy()
        shipper_cpu0 = _shipper_cpu(traced_tally) + _shipper_cpu(plain_tally)
        shipped0 = traced_tally.shipper.shipped + plain_tally.shipper.shipped
        start = time.monotonic()
        samples = run_cases(cases, drain, between, args.calls, args.rounds, args.warmup)
        wall = time.monotonic() - start
        busy1 = machine_busy()
        gc.enable()
        shipper_cpu = _shipper_cpu(traced_tally) + _shipper_cpu(plain_tally) - shipper_cpu0
        shipped = traced_tally.shipper.shipped + plain_tally.shipper.shipped - shipped0
        dropped = sum(sum(t.shipper.dropped.values()) for t in tallies)
        for t in tallies:
            t.close(5 if args.mode == "collector" else 0.2)
        if collector is not None:
            collector.__exit__(None, None, None)

    load = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    print(
        f"\nshim per-call cost: {args.rounds} rounds x {per_round:,} timed calls per case, "
        f"mode={args.mode}, gc {'off' if args.no_gc else 'on'}, {wall:.1f} s, machine busy "
        f"{load:.0%} of {os.cpu_count()} CPUs (this process uses about one), "
        f"Python {sys.version.split()[0]}"
    )
    pooled = {
        name: percentiles(array("q", (v for r in rs for v in r))) for name, rs in samples.items()
    }
    per_round_stats = {name: [percentiles(r) for r in rs] for name, rs in samples.items()}
    floor = pooled["timer floor"][0]
    print(
        f"timer floor (an empty timed statement): p50 {floor} ns, p99 {pooled['timer floor'][1]}"
        " ns; every figure below is net of the p50 floor"
    )
    # pooled: every call of every round. quiet: per round p50 and p99, the
    # lowest over rounds: the machine's noise (other processes on 2 CPUs)
    # mostly lands in some rounds, and the quietest round shows the shim's own.
    quiet = {
        name: (min(p50 for p50, _ in rs) - floor, min(p99 for _, p99 in rs) - floor)
        for name, rs in per_round_stats.items()
    }
    pooled = {name: (p50 - floor, p99 - floor) for name, (p50, p99) in pooled.items()}
    del quiet["timer floor"], pooled["timer floor"]
    print(f"\n  {'case':<42} {'pooled p50':>10} {'p99':>9}   {'quiet p50':>9} {'p99':>9}")
    for name in quiet:
        (a, b), (c, d) = pooled[name], quiet[name]
        print(f"  {name:<42} {a:>10,} {b:>9,}   {c:>9,} {d:>9,}")

    ok = True
    for label, figures in (("quietest round", quiet), ("pooled", pooled)):
        print(f"\nratio to the reference, {label} (goal <= {GOAL_RATIO} at p50 and p99):")
        for shim, ref in (
            ("produced", REF_SEND),
            ("consumed, with headers (link)", REF_PROCESS),
            ("consumed, no headers", REF_PROCESS),
        ):
            r50 = figures[shim][0] / figures[ref][0]
            r99 = figures[shim][1] / figures[ref][1]
            met = r50 <= GOAL_RATIO and r99 <= GOAL_RATIO
            if label == "quietest round":
                ok &= met
            print(f"  {shim:<32} p50 {r50:5.2f}x  p99 {r99:5.2f}x  {'met' if met else 'MISSED'}")
        shim, ref = "consumed, with headers (link)", REF_LINKED
        r50, r99 = figures[shim][0] / figures[ref][0], figures[shim][1] / figures[ref][1]
        print(f"  (informative) {shim} vs {ref}: p50 {r50:.2f}x, p99 {r99:.2f}x")
        print(f"tracing off, {label} (goal <= {GOAL_UNTRACED_NS:,} ns):")
        for shim in ("produced, tracing off", "consumed, tracing off"):
            p50, p99 = figures[shim]
            if label == "quietest round":
                ok &= p50 <= GOAL_UNTRACED_NS and p99 <= GOAL_UNTRACED_NS
            print(
                f"  {shim:<32} p50 {p50:,} ns {_met(p50 <= GOAL_UNTRACED_NS)}, "
                f"p99 {p99:,} ns {_met(p99 <= GOAL_UNTRACED_NS)}"
            )
    if args.mode == "collector" and shipped:
        print(
            f"\nshipper thread CPU: {shipper_cpu * 1e9 / shipped:,.0f} ns per record shipped "
            f"({shipped:,} records, {dropped:,} dropped; JSON encoding and HTTP, "
            "off the caller's path)"
        )
    if args.profile:
        profile(tp)
    tp.shutdown()
    return 0 if ok else 1


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def percentiles(values: array) -> tuple[int, int]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _shipper_cpu(tally: Tally) -> float:
    thread = tally.shipper._thread
    return thread_cpu_seconds(thread.native_id) if thread is not None else 0.0


if __name__ == "__main__":
    sys.exit(main())
