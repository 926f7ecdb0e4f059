"""OpenSLO (`apiVersion: openslo/v1`, `kind: SLO`) read into the same model as a native spec.

Supported: rolling time windows, the Occurrences budgeting method, one
objective (`target` ratio or `targetPercent`), and an inline indicator whose
`ratioMetric` is a Prometheus query over msgtally's own metrics, in the terms
of `msgtally.names.INDICATORS`:

- a ratio SLI: `bad` is the sum of its error counters (or `good` the sum of
  its good ones, where it has them), `total` the sum of its total counters,
  e.g. delivery: bad `msgtally_messages_lost_total`, total
  `msgtally_messages_produced_total`;
- latency: good `msgtally_delivery_latency_seconds_bucket{le="T"}`, total
  `msgtally_delivery_latency_seconds_count`.

Each selector matches `stream="S"` and, optionally, `group="G"`. Documents of
kind `Service` are accepted and ignored; anything else is a problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from msgtally.names import INDICATORS, RatioIndicator, SLIKind, counter

from .checks import check_slo, check_unique, read_period, read_scrape_interval
from .fields import FieldReader
from .model import SLO, Spec
from .yamldoc import Doc, Path, Problem

API_VERSION = "openslo/v1"


Ratio = tuple[str, frozenset[str], frozenset[str]]


def _counters(columns: tuple[str, ...]) -> frozenset[str]:
    return frozenset(counter(c) for c in columns)


def _ratios() -> dict[Ratio, SLIKind]:
    """(good or bad, numerator series, total series) -> the SLI kind they measure."""
    out: dict[Ratio, SLIKind] = {}
    for kind, ind in INDICATORS.items():
        if isinstance(ind, RatioIndicator):
            out["bad", _counters(ind.errors), _counters(ind.total)] = kind
            if ind.good:
                out["good", _counters(ind.good), _counters(ind.total)] = kind
        else:
            bucket, count = ind.histogram + "_bucket", ind.histogram + "_count"
            out["good", frozenset({bucket}), frozenset({count})] = kind
    return out


_RATIOS = _ratios()
_SELECTOR = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^}]*)\})?\s*(\+|$)")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_WEEKS = re.compile(r"^([1-9][0-9]*)w$")


def read_openslo(
    docs: list[Doc], buckets: Sequence[float], scrape_interval: int | None = None
) -> tuple[Spec | None, list[Problem]]:
    """OpenSLO documents -> (Spec, problems); Spec is None when there are problems.

    OpenSLO has no place for Prometheus's scrape interval: `scrape_interval`
    (from --scrape-interval) or the default."""
    problems: list[Problem] = []
    slos: list[SLO] = []
    shared: dict[str, tuple[Any, int | None]] = {}
    names: list[str] = []
    for doc in docs:
        r = FieldReader(doc)
        top = r.mapping(doc.data, (), ("apiVersion", "kind", "metadata", "spec"))
        if top is not None:
            if top.get("apiVersion") != API_VERSION:
                r.problem(
                    ("apiVersion",),
                    f"has value {top.get('apiVersion')!r}. Must be {API_VERSION!r}.",
                )
            elif top.get("kind") == "SLO":
                slo = _read_slo(r, top, buckets, shared)
                if slo is not None:
                    slos.append(slo)
                    names.append(slo.name)
            elif top.get("kind") != "Service":
                r.problem(
                    ("kind",),
                    f"has value {top.get('kind')!r}. Only SLO (and Service, "
                    "ignored) documents are read.",
                )
        problems += r.problems
    if not slos and not problems:
        problems.append(Problem(1, "(document)", "no OpenSLO document of kind SLO"))
    dup = FieldReader(Doc(data=None))
    check_unique(dup, names, [("metadata", "name")] * len(names))
    problems += dup.problems
    if problems:
        return None, problems
    period = shared["period"][0]
    flag = FieldReader(Doc(data=None))
    scrape = read_scrape_interval(flag, {}, (), period, scrape_interval)
    if scrape is None:
        return None, flag.problems
    return (
        Spec(
            service=shared["service"][0],
            period=period,
            labels=shared["labels"][0],
            slos=tuple(slos),
            scrape_interval=scrape,
        ),
        [],
    )


def _same(
    r: FieldReader, shared: dict[str, tuple[Any, int | None]], key: str, value: Any, path: Path
) -> None:
    """service, period and labels are per spec: every SLO document must agree."""
    if key not in shared:
        shared[key] = (value, r.doc.line(path))
    elif shared[key][0] != value:
        first, line = shared[key]
        r.problem(
            path,
            f"differs from the first SLO's ({first!r}, line {line}); "
            "one spec has one service, period and set of labels",
        )


def _read_slo(
    r: FieldReader, top: dict[str, Any], buckets: Sequence[float], shared: dict[str, Any]
) -> SLO | None:
    meta = r.mapping(
        top.get("metadata"),
        ("metadata",),
        ("name", "displayName", "labels", "annotations"),
        required=("name",),
    )
    name = r.name(meta, "name", ("metadata",)) if meta else None
    r.slo = name
    labels = r.text_map(meta, "labels", ("metadata",), labels=True) if meta else {}
    spec = r.mapping(
        top.get("spec"),
        ("spec",),
        (
            "description",
            "service",
            "indicator",
            "indicatorRef",
            "timeWindow",
            "budgetingMethod",
            "objectives",
            "alertPolicies",
        ),
        required=("service", "indicator", "timeWindow", "budgetingMethod", "objectives"),
    )
    if spec is None:
        return None
    for unsupported in ("indicatorRef", "alertPolicies"):
        if unsupported in spec:
            r.problem(
                ("spec", unsupported),
                "not supported by msgtally; use an inline "
                "indicator (alerting options: write a native msgtally/v1 spec)",
            )
    service = r.name(spec, "service", ("spec",))
    if service is not None:
        _same(r, shared, "service", service, ("spec", "service"))
    _same(r, shared, "labels", labels, ("metadata", "labels"))
    if "budgetingMethod" in spec and spec["budgetingMethod"] != "Occurrences":
        r.problem(
            ("spec", "budgetingMethod"),
            f"has value {spec['budgetingMethod']!r}. Only 'Occurrences' is supported.",
        )
    _read_window(r, spec, shared)
    objective = _read_objective(r, spec)
    sli, stream, group, threshold, tpath = _read_indicator(r, spec)
    return check_slo(
        r,
        ("spec",),
        buckets,
        name=name,
        stream=stream,
        group=group,
        sli=sli,
        objective=objective,
        threshold=threshold,
        threshold_given=threshold is not None,
        description=r.string(spec, "description", ("spec",)),
        threshold_path=tpath,
        name_path=("metadata", "name"),
    )


def _read_window(r: FieldReader, spec: dict[str, Any], shared: dict[str, Any]) -> None:
    windows = spec.get("timeWindow")
    path: Path = ("spec", "timeWindow")
    if not isinstance(windows, list) or len(windows) != 1:
        if "timeWindow" in spec:
            r.problem(path, "must be a list of one time window")
        return
    w = r.mapping(
        windows[0], (*path, 0), ("duration", "isRolling", "calendar"), required=("duration",)
    )
    if w is None:
        return
    if w.get("isRolling") is not True or "calendar" in w:
        r.problem((*path, 0), "only rolling windows (isRolling: true) are supported")
    duration = w.get("duration")
    weeks = _WEEKS.match(duration) if isinstance(duration, str) else None
    if weeks:
        w = {**w, "duration": f"{int(weeks[1]) * 7}d"}
    period = read_period(r, w, "duration", (*path, 0))
    if period is not None:
        _same(r, shared, "period", period, (*path, 0, "duration"))


def _read_objective(r: FieldReader, spec: dict[str, Any]) -> float | None:
    objectives = spec.get("objectives")
    path: Path = ("spec", "objectives")
    if not isinstance(objectives, list) or len(objectives) != 1:
        if "objectives" in spec:
            r.problem(path, "must be a list of exactly one objective")
        return None
    o = r.mapping(objectives[0], (*path, 0), ("displayName", "target", "targetPercent"))
    if o is None:
        return None
    if ("target" in o) == ("targetPercent" in o):
        r.problem((*path, 0), "needs exactly one of 'target' (ratio) or 'targetPercent'")
        return None
    if "targetPercent" in o:
        return r.number(o, "targetPercent", (*path, 0))
    target = r.number(o, "target", (*path, 0))
    if target is not None and not 0 < target < 1:
        r.problem((*path, 0, "target"), f"{target:g} is not a ratio above 0 and below 1")
        return None
    return None if target is None else float(Decimal(repr(target)) * 100)


def _read_indicator(
    r: FieldReader, spec: dict[str, Any]
) -> tuple[SLIKind | None, str | None, str | None, float | None, Path]:
    none: tuple[None, None, None, None, Path] = (None, None, None, None, ("spec",))
    path: Path = ("spec", "indicator")
    ind = r.mapping(spec.get("indicator"), path, ("metadata", "spec"), required=("spec",))
    if ind is None or "spec" not in ind:
        return none
    path = (*path, "spec")
    ispec = r.mapping(ind["spec"], path, ("ratioMetric",), required=("ratioMetric",))
    if ispec is None or "ratioMetric" not in ispec:
        return none
    path = (*path, "ratioMetric")
    ratio = r.mapping(
        ispec["ratioMetric"],
        path,
        ("counter", "good", "bad", "total", "rawType"),
        required=("total",),
    )
    if ratio is None:
        return none
    if ratio.get("counter") is not True:
        r.problem((*path, "counter"), "must be true: msgtally's metrics are counters")
    if ("good" in ratio) == ("bad" in ratio):
        r.problem(path, "needs exactly one of 'good' or 'bad'")
        return none
    role = "good" if "good" in ratio else "bad"
    num = _query(r, ratio[role], (*path, role))
    total = _query(r, ratio.get("total"), (*path, "total"))
    if num is None or total is None:
        return none
    kind = _RATIOS.get((role, frozenset(n for n, _ in num), frozenset(n for n, _ in total)))
    if kind is None:
        r.problem(
            path,
            f"is not one of msgtally's SLIs ({', '.join(SLIKind)}: "
            "the table of SLI kinds in docs/alerts.md)",
        )
        return none
    matchers = [m for _, m in num + total]
    stream, group = matchers[0].get("stream"), matchers[0].get("group")
    threshold: float | None = None
    for m in matchers:
        le = m.pop("le", None)
        if le is not None:
            try:
                threshold = float(le)
            except ValueError:
                r.problem((*path, role), f"le={le!r} is not a number of seconds")
        if m != {"stream": stream, **({"group": group} if group is not None else {})}:
            r.problem(
                path,
                'every selector must match the same stream="..." (and group="..."),'
                " and nothing else",
            )
            return none
    if stream is None:
        r.problem(path, 'selectors must match stream="..."')
        return none
    if kind is SLIKind.LATENCY and threshold is None:
        r.problem((*path, role), 'the bucket selector needs le="<threshold seconds>"')
    return kind, stream, group, threshold, (*path, role)


def _query(r: FieldReader, source: Any, path: Path) -> list[tuple[str, dict[str, str]]] | None:
    """`metricSource.spec.query` as a sum of selectors: [(metric name, {label: value})]."""
    q = source.get("metricSource", {}) if isinstance(source, dict) else None
    q = q.get("spec", {}).get("query") if isinstance(q, dict) else None
    where = (*path, "metricSource", "spec", "query")
    if not isinstance(q, str):
        r.problem(where, "needs metricSource.spec.query (a Prometheus selector)")
        return None
    if isinstance(source, dict) and source["metricSource"].get("type", "Prometheus") != (
        "Prometheus"
    ):
        r.problem((*path, "metricSource", "type"), "must be Prometheus")
    out: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(q):
        m = _SELECTOR.match(q, pos)
        if m is None or m.end() == pos:
            r.problem(where, f"{q!r} is not a selector or a sum of selectors")
            return None
        labels: dict[str, str] = {}
        body = m[2] or ""
        bpos = 0
        while bpos < len(body.strip()):
            mm = _MATCHER.match(body, bpos)
            if mm is None:
                r.problem(where, f'{q!r}: only label="value" matchers are supported')
                return None
            labels[mm[1]] = mm[2].encode().decode("unicode_escape")
            bpos = mm.end()
        out.append((m[1], labels))
        pos = m.end()
    return out
