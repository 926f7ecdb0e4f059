"""Maintenance windows as Alertmanager `time_intervals` and the routes that mute with them.

Maintenance mutes paging, not measurement: the rules, the recordings and the
dashboards run on; Alertmanager keeps the alerts and sends no notification of
a route while one of its `mute_time_intervals` is active.

- A recurring window is one time interval: its weekdays and times in its
  time zone (`location`); one that crosses midnight adds the next days from
  00:00 to its end.
- A one-off window becomes UTC calendar days: year, month, day of the month
  and the times of its first and last day (whole days in between).

Routes, first match wins, under the root route (they inherit its receiver):
per stream a window names, a route for the contract breaches of that stream
(only where they are muted differently) and one for every other alert of it;
then the same pair for the service. Each lists the windows that cover it:
the service's, and the stream's; contract breaches only those with
`mute_contracts`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from msgtally.names import CONTRACT_ALERT
from msgtally.slis.spec.model import WEEKDAYS, Maintenance, Once, Spec, Weekly

from .promql import quote

Interval = dict[str, Any]
Route = dict[str, Any]


def interval_name(spec: Spec, window: Maintenance) -> str:
    return f"msgtally-{spec.service}-{window.name}"


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def weekly_intervals(w: Weekly) -> list[Interval]:
    _, end = w.minutes
    location = {"location": w.time_zone}
    if end <= 1440:
        return [
            {"weekdays": list(w.days), "times": [{"start_time": w.start, "end_time": w.end}],
             **location}
        ]  # fmt: skip
    # Crosses midnight: the evening of each day, and the morning of the day after.
    after = [WEEKDAYS[(WEEKDAYS.index(d) + 1) % 7] for d in w.days]
    return [
        {"weekdays": list(w.days), "times": [{"start_time": w.start, "end_time": "24:00"}],
         **location},
        {"weekdays": sorted(after, key=WEEKDAYS.index),
         "times": [{"start_time": "00:00", "end_time": _clock(end - 1440)}], **location},
    ]  # fmt: skip


def once_intervals(w: Once) -> list[Interval]:
    """UTC calendar days: the first and last partial, whole days between, runs of whole
    days of a month folded into one range."""
    start, end = w.start.astimezone(UTC), w.end.astimezone(UTC)
    out: list[Interval] = []
    day = datetime(start.year, start.month, start.day, tzinfo=UTC)
    while day < end:
        following = day + timedelta(days=1)
        begin, finish = max(start, day), min(end, following)
        entry: Interval = {
            "years": [str(day.year)],
            "months": [str(day.month)],
            "days_of_month": [str(day.day)],
        }
        if (begin, finish) != (day, following):
            last = 1440 if finish == following else finish.hour * 60 + finish.minute
            entry["times"] = [
                {"start_time": _clock(begin.hour * 60 + begin.minute), "end_time": _clock(last)}
            ]
        previous = out[-1] if out else None
        if (
            previous is not None
            and "times" not in previous
            and "times" not in entry
            and previous["years"] == entry["years"]
            and previous["months"] == entry["months"]
        ):
            first = previous["days_of_month"][0].split(":")[0]
            previous["days_of_month"] = [f"{first}:{day.day}"]
        else:
            out.append(entry)
        day = following
    return out


def time_intervals(spec: Spec) -> list[dict[str, Any]]:
    return [
        {
            "name": interval_name(spec, w),
            "time_intervals": weekly_intervals(w.when)
            if isinstance(w.when, Weekly)
            else once_intervals(w.when),
        }
        for w in spec.maintenance
    ]


def _covering(spec: Spec, stream: str, contract: bool) -> list[str]:
    """The windows that mute the alerts of `stream` ("": the service's other alerts)."""
    return [
        interval_name(spec, w)
        for w in spec.maintenance
        if (not w.streams or stream in w.streams) and (w.mute_contracts or not contract)
    ]


def _route(matchers: list[str], mute: list[str]) -> Route:
    route: Route = {"matchers": matchers}
    if mute:
        route["mute_time_intervals"] = mute
    return route


def maintenance_routes(spec: Spec) -> list[Route]:
    if not spec.maintenance:
        return []
    service = f"service={quote(spec.service)}"
    contract = f"alertname={quote(CONTRACT_ALERT)}"
    contracted = {c.stream for c in spec.contracts}
    routes: list[Route] = []
    named = sorted({s for w in spec.maintenance for s in w.streams})
    for stream in [*named, ""]:
        matchers = [service] + ([f"stream={quote(stream)}"] if stream else [])
        mute = _covering(spec, stream, contract=False)
        mute_contract = _covering(spec, stream, contract=True)
        # Contract breaches that reach this route: the stream's, or (the service's route)
        # those of streams no window names.
        has_contracts = stream in contracted if stream else bool(contracted - set(named))
        if not mute and not mute_contract:
            continue
        if has_contracts and mute_contract != mute:
            routes.append(_route([*matchers, contract], mute_contract))
        routes.append(_route(matchers, mute))
    return routes
