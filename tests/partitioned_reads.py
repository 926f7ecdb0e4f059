"""The reads of two stores held to each other: the windowed figures (/v1/slis?since=,
the per-minute and per-hour rows), /metrics' msgtally series, `report --json`,
/v1/discrepancies, the SLO objectives and the status page's rows, through real
collectors' HTTP APIs where there is one, at the same `now` otherwise."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from typing import Any

import httpx
from sqlalchemy import Engine

from msgtally.cli import main
from msgtally.names import LAST_PASS
from msgtally.oracle import ID_KINDS
from msgtally.slis.read.exposition import StoreCollector
from msgtally.slis.read.objectives import events
from msgtally.slis.read.windows import read_series, read_window
from msgtally.slis.spec.load import load_spec
from msgtally.slis.spec.model import Spec, parse_duration
from msgtally.status.model import objectives
from msgtally.status.series import burndown, graphs
from msgtally.store.tables import HOUR, MINUTE
from tests.conftest import LiveCollector
from tests.partitioned_support import CONFIG

SPEC = """\
version: msgtally/v1
service: partitioned
period: 1d
scrape_interval: 15s
slos:
  - {name: s1-g1, stream: s1, group: g1, sli: delivery, objective: 99}
  - {name: s1-dups, stream: s1, sli: duplicates, objective: 95}
  - {name: s2-g2, stream: s2, group: g2, sli: delivery, objective: 99.9}
  - {name: s2-late, stream: s2, sli: latency, threshold: 2.5, objective: 90}
"""
# A group that appears mid-history is back-filled on each partition when that
# partition learns of it: with its first records there, or from the store's
# announcement, later, at that partition's clock. Its figures over all time are
# the single engine's; over a window they are not yet (the single engine
# back-fills every partition's ids at the request's clock): its windowed rows are
# left out of the comparison until the log tells every partition at that clock.
UNEVEN = "g4"
# The engine's own bookkeeping that differs by deployment: when it last passed (the
# single engine's tick, the workers' commits). The records applied, the backlog and
# what the log holds (the log table's oldest row; the latest of the partitions'
# oldest messages) are compared: the same.
ENGINE_SERIES = {LAST_PASS}
WINDOWS = ("1m", "20m", "1h", "75m", "2h", "150m", "3h", "4h", "1d")


def spec() -> Spec:
    return load_spec(SPEC)


def same_minute(read: Callable[[], Any]) -> Any:
    """`read()`, again until it began and ended in the same minute: the windows of
    the reads it makes end at the same minute."""
    while True:
        minute = time.time() // MINUTE
        got = read()
        if time.time() // MINUTE == minute:
            return got


def http_reads(url: str, store: Engine) -> dict[str, Any]:
    """What a collector answers: SLIs over each window and over all time, the
    discrepancy ids of each kind, the msgtally series of /metrics."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for since in (None, *WINDOWS):
            params = {} if since is None else {"since": since}
            answer = client.get("/v1/slis", params=params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            rows = body if isinstance(body, list) else body["slis"]
            for row in rows:
                row.get("window", {}).pop("end", None)  # the request's clock
            out[f"slis {since}"] = [r for r in rows if since is None or r["group"] != UNEVEN]
        for kind in ID_KINDS:
            answer = client.get("/v1/discrepancies", params={"kind": kind, "limit": 100_000})
            assert answer.status_code == 200, answer.text
            out[f"discrepancies {kind}"] = answer.json()
        answer = client.get("/metrics")
        assert answer.status_code == 200, answer.text
        out["metrics"] = store_series(answer.text, store)
    return out


def store_series(text: str, store: Engine) -> list[str]:
    """The samples of the families /metrics reads from the store (not the process's,
    nor the engine's last pass), with their values; `_created` samples are the
    scrape's clock."""
    families = {m.name for m in StoreCollector(store, CONFIG.latency_buckets).collect()}
    families -= ENGINE_SERIES
    return sorted(
        line for line in text.splitlines()
        if line.split("{")[0].split(" ")[0].removesuffix("_total").removesuffix("_bucket")
        .removesuffix("_count").removesuffix("_sum") in families
    )  # fmt: skip


def report(url: str, since: str | None) -> Any:
    out = io.StringIO()
    args = ["report", "--json", "--db", url] + ([] if since is None else ["--since", since])
    with redirect_stdout(out):
        assert main(args) == 0
    rows = json.loads(out.getvalue())
    return [r for r in rows if since is None or r["group"] != UNEVEN]


def local_reads(store: Engine, now: float) -> dict[str, Any]:
    """The figures read in-process at `now`: the windows' sums per pair, the
    per-minute and per-hour series, the objectives' events, the status rows with
    their graphs and burn-downs."""
    s = spec()
    out: dict[str, Any] = {}
    with store.connect() as conn:
        for since in WINDOWS:
            sums = [x for x in read_window(conn, now, parse_duration(since)) if x.group != UNEVEN]
            out[f"window {since}"] = [(x.stream, x.group, x.counts, round(x.latency_sum, 6),
                                       x.buckets) for x in sums]  # fmt: skip
            out[f"events {since}"] = {slo.name: events(slo, sums) for slo in s.slos}
        pairs = sorted({(x.stream, x.group) for x in read_window(conn, now, 86_400)
                        if x.group != UNEVEN})  # fmt: skip
        for step in (MINUTE, HOUR):
            series = read_series(conn, now - 6 * HOUR, now, pairs, step)
            out[f"series {step}"] = [(at, x.counts, round(x.latency_sum, 6), x.buckets)
                                     for at, x in series]  # fmt: skip
        for which in (s, None):
            rows = [o for o in objectives(conn, which, now) if o.group != UNEVEN]
            out[f"objectives {which is not None}"] = [_rounded(o.to_json()) for o in rows]
            for o in (o for o in rows if all(x.group != UNEVEN for x in o.slis)):
                out[f"graphs {o.key}"] = _rounded(graphs(conn, o, now, 6 * HOUR))
                out[f"burndown {o.key}"] = _rounded(burndown(conn, o, now))
    return out


def _rounded(value: Any) -> Any:
    """Floats to 9 significant digits: latency sums are added in another order."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def assert_reads_same(got: Engine, got_url: str, want: Engine, want_url: str) -> None:
    """Every read of `got` is `want`'s, key by key (the first difference named)."""
    now = time.time()
    a, b = local_reads(got, now), local_reads(want, now)
    _same(a, b)
    one, two = (LiveCollector(store, CONFIG, spec=spec()) for store in (got, want))
    with one, two:
        a, b = same_minute(lambda: (http_reads(one.url, got), http_reads(two.url, want)))
    _same(_rounded(a), _rounded(b))
    for since in (None, *WINDOWS):

        def reports(s: str | None = since) -> tuple[Any, Any]:
            return report(got_url, s), report(want_url, s)

        ra, rb = same_minute(reports)
        _same({f"report {since}": _rounded(ra)}, {f"report {since}": _rounded(rb)})


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for key in b:
        assert a[key] == b[key], (key, _first_difference(a[key], b[key]))


def _first_difference(a: Any, b: Any, at: str = "") -> tuple[str, Any, Any]:
    """Where two read answers first differ, and the two values there."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for k in b:
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{at}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{at}[{i}]")
    return at, a, b
