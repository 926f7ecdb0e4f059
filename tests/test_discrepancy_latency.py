"""Every discrepancy row that has a latency carries it, whenever its records
came: before the verdict, or after the id was judged, compacted and written
to a checkpoint (a Kafka consumer re-reading after a crash). A row whose id
has no latency (never consumed ok, never produced) says so with null."""

from __future__ import annotations

from sqlalchemy import Engine

from msgtally.reconcile.config import ReconcileConfig
from msgtally.slis.read.query import read_discrepancies
from tests.harness import consume, ingest, produce, run

CONFIG = ReconcileConfig()  # deadline 300 s, settle 10 s, remember 60 s


def latencies(store: Engine, kind: str) -> dict[str, float | None]:
    with store.connect() as conn:
        return {r["message_id"]: r["latency"] for r in read_discrepancies(conn, kind=kind)}


def test_every_row_with_a_latency_carries_it(store: Engine) -> None:
    ingest(store, [
        produce("s", "dup-early", 0), consume("s", "dup-early", "g", 0.25),
        consume("s", "dup-early", "g", 0.75, attempt=2),
        produce("s", "dup-late", 0), consume("s", "dup-late", "g", 0.5),
        produce("s", "late", 0), consume("s", "late", "g", 400.0),
        produce("s", "dead", 0), consume("s", "dead", "g", 1.5),
        consume("s", "dead", "g", 2.0, attempt=2, outcome="dead_letter"),
        produce("s", "lost", 0),
        consume("s", "ghost", "g", 0.5),
    ])  # fmt: skip
    run(store, CONFIG, 5)  # dup-late is delivered plainly: judged, compacted, checkpointed
    # Its duplicate comes afterwards, to a new engine that loads the checkpoint.
    ingest(store, [consume("s", "dup-late", "g", 6.0, attempt=1)])
    run(store, CONFIG, 1000)
    assert latencies(store, "duplicated") == {"dup-early": 0.25, "dup-late": 0.5}
    assert latencies(store, "late") == {"late": 400.0}
    assert latencies(store, "dead_lettered") == {"dead": 1.5}
    assert latencies(store, "lost") == {"late": 400.0, "lost": None}
    assert latencies(store, "unexpected") == {"ghost": None}


def test_an_earlier_delivery_arriving_after_the_verdict_does_not_move_the_latency(
    store: Engine,
) -> None:
    """docs/definitions.md: the latency is observed when the id is judged
    delivered, right after the request that brings its in-time delivery; an ok
    delivery with an earlier ts in a later request is a duplicate, and the
    latency stays the one observed (histograms never go down), whatever requests
    a pass takes."""
    ingest(store, [produce("s", "m", 0), consume("s", "m", "g", 3.0)])
    run(store, CONFIG, 5)  # judged delivered at once: latency 3
    ingest(store, [consume("s", "m", "g", 1.0)])  # another instance's, sent later
    run(store, CONFIG, 1000)
    assert latencies(store, "duplicated") == {"m": 3.0}
    # In one request, the earliest is taken.
    ingest(store, [produce("s", "n", 0), consume("s", "n", "g", 3.0),
                   consume("s", "n", "g", 1.0)])  # fmt: skip
    run(store, CONFIG, 1010)
    assert latencies(store, "duplicated") == {"m": 3.0, "n": 1.0}
    # In two requests that one pass takes, as in two passes (and as the workers on
    # the Kafka log judge them): the first request's, judged right after it.
    ingest(store, [produce("s", "k", 0), consume("s", "k", "g", 3.0)])
    ingest(store, [consume("s", "k", "g", 1.0)])
    run(store, CONFIG, 1020)
    assert latencies(store, "duplicated") == {"m": 3.0, "n": 1.0, "k": 3.0}
