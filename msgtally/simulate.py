"""A simulated pipeline with injected faults, and the ground truth of each fault.

Pure: a seed in, delivery records and the expected figures out. Every fault
is drawn per message, written as the records a shim would send, and counted
in the truth exactly as docs/definitions.md defines the outcome.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Flow:
    stream: str
    groups: tuple[str, ...]
    deadline: float
    # fault -> probability per message (per group where the fault is a consumer's)
    faults: dict[str, float]


FLOWS = (
    Flow(
        "orders",
        ("billing", "shipping"),
        300.0,
        {"lost": 0.004, "duplicate": 0.01, "retry": 0.03, "dead_letter": 0.002, "late": 0.002},
    ),
    Flow(
        "payments",
        ("ledger",),
        300.0,
        {"lost": 0.001, "producer_retry": 0.02, "indeterminate": 0.004, "duplicate": 0.002},
    ),
    Flow("telemetry", ("analytics",), 60.0, {"lost": 0.02, "late": 0.005, "unexpected": 0.002}),
)
OUTCOME_FIELDS = (
    "produced",
    "delivered",
    "lost",
    "late",
    "duplicated",
    "retried",
    "attempts",
    "dead_lettered",
    "unexpected",
    "recovered",
)


@dataclass
class Simulation:
    records: list[dict[str, Any]] = field(default_factory=list)
    truth: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)

    def count(self, stream: str, group: str, **deltas: int) -> None:
        self.truth.setdefault((stream, group), Counter()).update(deltas)


def _rec(stream: str, kind: str, mid: str, ts: float, **extra: Any) -> dict[str, Any]:
    return {"stream": stream, "kind": kind, "message_id": mid, "ts": round(ts, 6), **extra}


def simulate(ids_per_stream: int, start: float, seed: int = 7) -> Simulation:
    """Messages spread over an hour from `start`; faults drawn with `seed`."""
    rng = random.Random(seed)
    sim = Simulation()
    for flow in FLOWS:
        for group in flow.groups:
            sim.count(flow.stream, group)  # every expected group has a row
        for i in range(ids_per_stream):
            _one(sim, rng, flow, f"{flow.stream[:3]}-{i:07d}", start + 3600.0 * i / ids_per_stream)
        for j in range(round(ids_per_stream * flow.faults.get("unexpected", 0.0))):
            group = flow.groups[j % len(flow.groups)]
            sim.records.append(
                _rec(flow.stream, "consume", f"ghost-{j}", start + 10.0 * j, group=group)
            )
            sim.count(flow.stream, group, unexpected=1)
    return sim


def _one(sim: Simulation, rng: random.Random, flow: Flow, mid: str, t0: float) -> None:
    s, f = flow.stream, flow.faults
    produces = [_rec(s, "produce", mid, t0, producer="p1")]
    acked = True
    if rng.random() < f.get("producer_retry", 0.0):  # broker timed out, resend succeeded
        produces = [
            _rec(s, "produce", mid, t0, attempt=1, outcome="error"),
            _rec(s, "produce", mid, t0 + 0.5, attempt=2),
        ]
    elif rng.random() < f.get("indeterminate", 0.0):  # send timed out, never confirmed
        produces = [_rec(s, "produce", mid, t0, outcome="error")]
        acked = False
    sim.records.extend(produces)
    retried_by_producer = len(produces) > 1
    for group in flow.groups:
        latency = rng.lognormvariate(-1.6, 0.7)  # median ~0.2 s
        consumes = _consumes(rng, flow, group, mid, t0, latency)
        sim.records.extend(consumes)
        oks = [c for c in consumes if c["outcome"] == "ok"]
        attempts = max([c.get("attempt", 1) for c in consumes], default=1)
        counts = Counter(
            attempts=len(consumes),
            duplicated=max(len(oks) - 1, 0),
            retried=int(retried_by_producer or attempts > 1),
        )
        if acked:
            in_time = [c for c in oks if c["ts"] <= t0 + flow.deadline]
            counts.update(
                produced=1,
                delivered=int(bool(in_time)),
                lost=int(not in_time),
                late=int(bool(oks) and not in_time),
                dead_lettered=int(any(c["outcome"] == "dead_letter" for c in consumes)),
            )
        else:
            counts.update(recovered=int(bool(oks)))
        sim.count(s, group, **counts)


def _consumes(
    rng: random.Random, flow: Flow, group: str, mid: str, t0: float, latency: float
) -> list[dict[str, Any]]:
    s, f = flow.stream, flow.faults

    def c(dt: float, attempt: int = 1, outcome: str = "ok") -> dict[str, Any]:
        return _rec(s, "consume", mid, t0 + dt, group=group, attempt=attempt, outcome=outcome)

    draw = rng.random()
    for fault in ("lost", "late", "dead_letter", "duplicate", "retry"):
        p = f.get(fault, 0.0)
        if draw < p:
            break
        draw -= p
    else:
        return [c(latency)]
    if fault == "lost":  # acked before processing, then the consumer crashed
        return []
    if fault == "late":  # a stuck partition: consumed well after the deadline
        return [c(flow.deadline + 30.0 + latency)]
    if fault == "dead_letter":  # poison message
        return [
            c(latency, 1, "error"),
            c(latency + 1, 2, "error"),
            c(latency + 2, 3, "dead_letter"),
        ]
    if fault == "duplicate":  # processed, crashed before ack, redelivered
        return [c(latency), c(latency + 5.0, 2)]
    return [c(latency, 1, "error"), c(latency + 1.0, 2)]  # retry: error, then ok


def batches(
    records: list[dict[str, Any]], size: int, rng: random.Random
) -> Iterator[list[dict[str, Any]]]:
    """Records in ts order with local shuffling, as shims flush them: some
    consumes arrive before their produce."""
    ordered = sorted(records, key=lambda r: r["ts"])
    for i in range(0, len(ordered), size):
        chunk = ordered[i : i + size]
        rng.shuffle(chunk)
        yield chunk
