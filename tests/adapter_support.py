"""What the broker adapters' end-to-end tests share: a real collector on its own
store, the shims that report to it, the spans they make, and the oracle that
turns what a test observed into the SLI figures the collector must report."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from msgtally.ingest.shim.adapters.common import Received
from msgtally.ingest.shim.tally import Tally
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.store.db import open_store
from tests.conftest import LiveCollector

GROUP = "billing"
# The figures every adapter test checks, exactly.
FIGURES = (
    "produced",
    "delivered",
    "lost",
    "duplicated",
    "retried",
    "attempts",
    "dead_lettered",
    "consume_errors",
    "unexpected",
    "recovered",
)


@dataclass
class Env:
    """A live collector on a fresh SQLite store, and the shims reporting to it."""

    system: str
    store: Engine
    live: LiveCollector
    spans: InMemorySpanExporter
    provider: TracerProvider
    config: ReconcileConfig
    tallies: list[Tally] = field(default_factory=list)
    registries: dict[int, CollectorRegistry] = field(default_factory=dict)

    def tally(self, *, traced: bool = True) -> Tally:
        """A new shim (one per service), traced through `spans` unless told not."""
        registry = CollectorRegistry()
        made = Tally(
            collector_url=self.live.url,
            system=self.system,
            registry=registry,
            tracer_provider=self.provider if traced else None,
            tracing=traced,
            flush_interval=0.05,
        )
        self.tallies.append(made)
        self.registries[id(made)] = registry
        return made

    def registry(self, tally: Tally) -> CollectorRegistry:
        return self.registries[id(tally)]

    def row(self, stream: str, group: str = GROUP) -> dict[str, Any]:
        """Flush every shim, reconcile past every deadline, read the collector's SLI row."""
        for tally in self.tallies:
            assert tally.flush(15), "shim did not flush"
        reconcile(self.store, self.config, now=time.time() + self.config.deadline + 60)
        resp = httpx.get(f"{self.live.url}/v1/slis", params={"stream": stream, "group": group})
        resp.raise_for_status()
        (row,) = resp.json()
        assert isinstance(row, dict)
        return row

    def figures(self, stream: str, group: str = GROUP) -> dict[str, int]:
        """The collector's figures (`row`), those every adapter test checks."""
        row = self.row(stream, group)
        return {k: int(row[k]) for k in FIGURES}

    def errors(self, stream: str, group: str = GROUP) -> dict[str, dict[str, int]]:
        """The failed records by error class the collector reports (`row`): the stream's
        produces and the group's consumes, the classes with a count only."""
        row = self.row(stream, group)
        return {
            kind: {c: int(n) for c, n in counts.items() if n}
            for kind, counts in row["errors"].items()
        }

    def discrepancies(self, stream: str, kind: str, group: str = GROUP) -> list[str]:
        """The message ids the collector reports for one discrepancy kind, sorted."""
        resp = httpx.get(
            f"{self.live.url}/v1/discrepancies",
            params={"stream": stream, "group": group, "kind": kind},
        )
        resp.raise_for_status()
        return sorted(d["message_id"] for d in resp.json()["ids"])

    def spans_of(self, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.kind == kind]

    def check_links(self) -> tuple[int, int]:
        """Every consumer span with a link points at its message's producer span.

        Returns (linked, unlinked) consumer span counts."""
        sends = {
            str(s.attributes["messaging.message.id"]): s  # type: ignore[index]
            for s in self.spans_of(SpanKind.PRODUCER)
        }
        linked = unlinked = 0
        for span in self.spans_of(SpanKind.CONSUMER):
            assert span.attributes is not None
            assert span.attributes["messaging.system"] == self.system
            if not span.links:
                unlinked += 1
                continue
            send = sends[str(span.attributes["messaging.message.id"])]
            (link,) = span.links
            assert link.context.trace_id == send.context.trace_id  # type: ignore[union-attr]
            assert link.context.span_id == send.context.span_id  # type: ignore[union-attr]
            linked += 1
        return linked, unlinked


@contextmanager
def adapter_env(tmp_path: Path, system: str, deadline: float = 5.0) -> Iterator[Env]:
    """An `Env` for one test; every shim it made is closed afterwards. Every
    message must be delivered within `deadline` s of its produce to count as
    delivered (the oracle's figures assume it)."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    config = ReconcileConfig(deadline=deadline, settle=0)
    try:
        with LiveCollector(store, config) as live:
            env = Env(system, store, live, spans, provider, config)
            try:
                yield env
            finally:
                for tally in env.tallies:
                    tally.close(timeout=1)
    finally:
        provider.shutdown()
        store.dispose()


@dataclass
class Observed:
    """What a test saw, independently of the shim: the oracle for the SLIs."""

    produced: list[str] = field(default_factory=list)  # acknowledged, in order
    indeterminate: set[str] = field(default_factory=set)  # only unconfirmed sends
    produce_attempts: Counter[str] = field(default_factory=Counter)
    deliveries: list[tuple[str, int, str]] = field(default_factory=list)  # id, attempt, outcome

    def produce(self, message_id: str, attempt: int = 1, *, acked: bool = True) -> None:
        """A send up to `attempt`: acknowledged, or never confirmed (`acked=False`)."""
        if acked and message_id not in self.produced:
            self.produced.append(message_id)
            self.indeterminate.discard(message_id)
        elif not acked and message_id not in self.produced:
            self.indeterminate.add(message_id)
        self.produce_attempts[message_id] = max(self.produce_attempts[message_id], attempt)

    def deliver(self, message_id: str, attempt: int, outcome: str = "ok") -> None:
        self.deliveries.append((message_id, attempt, outcome))

    def ok(self) -> Counter[str]:
        """Ok deliveries per id."""
        return Counter(m for m, _, o in self.deliveries if o == "ok")

    def expected(self) -> dict[str, int]:
        """The figures of docs/definitions.md for what was observed (all in time)."""
        ok = self.ok()
        top = Counter(self.produce_attempts)
        for m, attempt, _ in self.deliveries:
            top[m] = max(top[m], attempt)
        produced = set(self.produced)
        sent = produced | self.indeterminate
        delivered_to = {m for m, _, _ in self.deliveries}
        return {
            "produced": len(produced),
            "delivered": sum(1 for m in produced if ok[m]),
            "lost": sum(1 for m in produced if not ok[m]),
            "duplicated": sum(n - 1 for n in ok.values()),
            "retried": sum(1 for m in top if top[m] > 1),
            "attempts": sum(1 for m, _, _ in self.deliveries if m in sent),
            "dead_lettered": len({m for m, _, o in self.deliveries if o == "dead_letter"}),
            "consume_errors": sum(1 for _, _, o in self.deliveries if o == "error"),
            "unexpected": len(delivered_to - sent),
            "recovered": sum(1 for m in self.indeterminate if ok[m]),
        }


def figures_of(**given: int) -> dict[str, int]:
    """A full figures dict: the given ones, every other figure 0."""
    assert set(given) <= set(FIGURES), set(given) - set(FIGURES)
    return {k: given.get(k, 0) for k in FIGURES}


def faulty(
    id_of: Callable[[Any], str],
    fail: Callable[[str, int], bool] = lambda m, n: False,
    dead: Callable[[str], bool] = lambda m: False,
) -> Callable[[Any], None]:
    """A handler that raises when `fail(id, attempt)` and dead-letters when
    `dead(id)`, the id read by the test itself (`id_of`), not by the adapter."""

    def handle(msg: Received[Any]) -> None:
        mid = id_of(msg)
        if dead(mid):
            msg.dead_letter()
        elif fail(mid, msg.attempt):
            raise RuntimeError(f"cannot process {mid} yet")

    return handle
