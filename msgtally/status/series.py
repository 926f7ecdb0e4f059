"""The detail page's graphs as columns for uPlot: time, then one list per line.

Every point is a sum of the engine's per-minute (or, over more than a day,
per-hour) rows of the SLO's pairs; rolling burn rates are sums of those
points over each window of the generated rules.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Connection

from msgtally.slis.read.objectives import error_ratio, events
from msgtally.slis.read.windows import Sums, bucket_quantile, read_series, step_for
from msgtally.slis.spec import budget
from msgtally.slis.spec.model import SLO

from .model import Objective, _delivery

COUNTS = ("lost", "duplicated", "late", "dead_lettered")


def _slo(o: Objective) -> SLO:
    return o.slo or _delivery(o.stream, o.group)


def _pairs(o: Objective) -> list[tuple[str, str]]:
    return [(s.stream, s.group) for s in o.slis]


def graphs(conn: Connection, o: Objective, now: float, seconds: int) -> dict[str, Any]:
    """Success, burn per window pair, counts and latency over the last `seconds`."""
    slo = _slo(o)
    step = step_for(seconds)
    longest = max((b.long for b in o.burns), default=0)
    by_at = dict(read_series(conn, now - seconds - longest, now, _pairs(o), step))
    first = int((now - seconds) // step * step)
    before = int((now - seconds - longest) // step * step)
    every = list(range(before, int(now // step) * step + 1, step))
    ats = [a for a in every if a >= first]
    ev = [events(slo, [by_at[a]]) if a in by_at else (0, 0) for a in ats]
    out: dict[str, Any] = {"step": step, "t": ats}
    out["success"] = [None if r is None else 1 - r for r in (error_ratio(*e) for e in ev)]
    out["objective"] = None if o.slo is None else o.slo.objective / 100
    for name in COUNTS:
        out[name] = [by_at[a].counts[name] if a in by_at else 0 for a in ats]
    for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        out[label] = [bucket_quantile(by_at[a].buckets, q) if a in by_at else None for a in ats]
    out["threshold"] = None if o.slo is None else o.slo.threshold
    out["burns"] = []
    if o.slo is not None:
        for b in o.burns:
            values = _rolling(slo, by_at, every, b.long, step)[len(every) - len(ats):]
            out["burns"].append({"label": b.label, "factor": b.factor, "severity": b.severity,
                                 "values": values})  # fmt: skip
    return out


def _rolling(slo: SLO, by_at: dict[int, Sums], ats: list[int], window: int,
             step: int) -> list[float | None]:  # fmt: skip
    """The burn rate over `window` ending at each point (prefix sums: one pass)."""
    n = max(1, math.ceil(window / step))
    errors, totals = [0], [0]
    for a in ats:
        e, t = events(slo, [by_at[a]]) if a in by_at else (0, 0)
        errors.append(errors[-1] + e)
        totals.append(totals[-1] + t)
    out: list[float | None] = []
    for i in range(1, len(ats) + 1):
        lo = max(0, i - n)
        ratio = error_ratio(errors[i] - errors[lo], totals[i] - totals[lo])
        out.append(None if ratio is None else budget.burn_rate(ratio, slo.objective))
    return out


def burndown(conn: Connection, o: Objective, now: float) -> dict[str, Any]:
    """The budget left over the period (from its start, or the store's first row), the
    even-spend ideal, and the forecast at the period's burn rate so far."""
    if o.slo is None or o.allowed <= 0:
        return {"t": [], "left": [], "ideal": [], "forecast": [], "runs_out_at": None}
    start = now - o.elapsed
    points = read_series(conn, start, now, _pairs(o), step_for(o.elapsed))
    ats, left, spent = [], [], 0
    for at, sums in points:
        spent += events(o.slo, [sums])[0]
        ats.append(at)
        left.append(budget.budget_left(spent, o.allowed))
    period_start = now - o.period if o.elapsed >= o.period else start
    ideal = [budget.ideal_left(period_start, a, o.period) for a in ats]
    runs_out = o.runs_out_in
    at_end = None if runs_out is None else now + runs_out
    forecast: list[float | None] = [None] * len(ats)
    if at_end is not None and ats and o.budget_left is not None:
        # the line from now's budget left to 0 at the forecast time
        ats.append(int(at_end))
        left.append(None)
        ideal.append(budget.ideal_left(period_start, at_end, o.period))
        forecast[-1] = o.budget_left
        forecast.append(0.0)
    return {"t": ats, "left": left, "ideal": ideal, "forecast": forecast,
            "runs_out_at": at_end}  # fmt: skip
