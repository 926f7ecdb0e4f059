"""A simulated pipeline with injected faults, as the records shims would send.

Pure: a seed in, delivery records out. Every fault is drawn per message and
written as the records a shim would send; what they must count for is the
oracle's to say (`truth`), not a second copy of the rules here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from msgtally.oracle import GroupOutcome, Record, oracle


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


def _rec(stream: str, kind: str, mid: str, ts: float, **extra: Any) -> dict[str, Any]:
    return {"stream": stream, "kind": kind, "message_id": mid, "ts": round(ts, 6), **extra}


def simulate(ids_per_stream: int, start: float, seed: int = 7) -> list[dict[str, Any]]:
    """Messages spread over an hour from `start`; faults drawn with `seed`."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for flow in FLOWS:
        for i in range(ids_per_stream):
            t0 = start + 3600.0 * i / ids_per_stream
            records.extend(_one(rng, flow, f"{flow.stream[:3]}-{i:07d}", t0))
        for j in range(round(ids_per_stream * flow.faults.get("unexpected", 0.0))):
            group = flow.groups[j % len(flow.groups)]
            records.append(
                _rec(flow.stream, "consume", f"ghost-{j}", start + 10.0 * j, group=group)
            )
    return records


def truth(records: list[dict[str, Any]]) -> dict[tuple[str, str], GroupOutcome]:
    """What the records count for, per (stream, group), once every deadline passed."""
    return oracle(
        (Record(**r) for r in records), stream_deadlines={f.stream: f.deadline for f in FLOWS}
    )


def _one(rng: random.Random, flow: Flow, mid: str, t0: float) -> list[dict[str, Any]]:
    s, f = flow.stream, flow.faults
    produces = [_rec(s, "produce", mid, t0, producer="p1")]
    if rng.random() < f.get("producer_retry", 0.0):  # broker timed out, resend succeeded
        produces = [
            _rec(s, "produce", mid, t0, attempt=1, outcome="error"),
            _rec(s, "produce", mid, t0 + 0.5, attempt=2),
        ]
    elif rng.random() < f.get("indeterminate", 0.0):  # send timed out, never confirmed
        produces = [_rec(s, "produce", mid, t0, outcome="error")]
    out = produces
    for group in flow.groups:
        latency = rng.lognormvariate(-1.6, 0.7)  # median ~0.2 s
        out += _consumes(rng, flow, group, mid, t0, latency)
    return out


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
