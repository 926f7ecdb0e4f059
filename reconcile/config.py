"""What a reconcile pass needs to know: deadlines, expected groups, buckets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from msgtally.names import DEFAULT_BUCKETS

DEFAULT_DEADLINE = 300.0
# Ingest lag allowance: an id is classified `settle` seconds after its deadline,
# so a shim's last batch (flushed every second or so) is in before the verdict.
DEFAULT_SETTLE = 10.0
# How long a judged id stays in memory after its deadline + settle, so that a
# late record (a redelivery, a retry) still moves its figures by what it changes.
DEFAULT_REMEMBER = 60.0
# Records per reconcile transaction: keeps the write lock short and the
# scratch tables bounded, whatever the backlog.
DEFAULT_BUDGET = 250_000


@dataclass(frozen=True)
class ReconcileConfig:
    deadline: float = DEFAULT_DEADLINE
    stream_deadlines: Mapping[str, float] = field(default_factory=dict)
    expected_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    settle: float = DEFAULT_SETTLE
    remember: float = DEFAULT_REMEMBER
    latency_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    budget: int = DEFAULT_BUDGET

    def __post_init__(self) -> None:
        _positive("deadline", self.deadline)
        for stream, seconds in self.stream_deadlines.items():
            _positive(f"stream_deadlines[{stream!r}]", seconds)
        for name in ("settle", "remember"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} has value {value!r}. Must be >= 0 seconds.")
        bounds = self.latency_buckets
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError("latency_buckets must be a non-empty list of finite numbers.")
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"latency_buckets {list(bounds)} must be strictly increasing.")
        if self.budget < 1:
            raise ValueError(f"budget has value {self.budget!r}. Must be >= 1.")

    def deadline_of(self, stream: str) -> float:
        return self.stream_deadlines.get(stream, self.deadline)


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} has value {value!r}. Must be a positive number of seconds.")
