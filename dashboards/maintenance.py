"""Maintenance windows on every dashboard, as Grafana annotations: regions, not pauses.

The figures never pause during maintenance (it mutes paging, not measurement);
the dashboards shade the windows so a dip reads as what it is.

- A one-off window: an annotation query on the Prometheus data source that
  returns a series only between its start and end
  (`vector(time()) >= START < END`); Grafana draws the span as one region.
- A recurring window: Grafana's own time regions (the built-in Grafana data
  source, cron mode: a cron expression of its start on its days, a duration
  and its time zone), so it repeats at its local time across daylight saving
  time changes, whatever range the dashboard shows, with no query to
  Prometheus.
"""

from __future__ import annotations

import re
from typing import Any

from msgtally.alerts.windows import format_duration
from msgtally.slis.spec.model import WEEKDAYS, Maintenance, Once, Spec, Weekly

from .sdk import cogbuilder, cogvariants, common, dashboard

COLOR = "rgba(143, 59, 184, 0.2)"  # Grafana's purple, translucent
GRAFANA = common.DataSourceRef(type_val="datasource", uid="grafana")
_CRON_DAYS = {day: (i + 1) % 7 for i, day in enumerate(WEEKDAYS)}  # cron: 0 is sunday


class TimeRegions(cogvariants.Dataquery):
    """The built-in Grafana data source's time regions query (the SDK has no type)."""

    def __init__(self, region: dict[str, Any]) -> None:
        self.region = region

    def to_json(self) -> dict[str, object]:
        return {"queryType": "timeRegions", "refId": "Anno", "timeRegion": self.region}


class _Query(cogbuilder.Builder[cogvariants.Dataquery]):
    """A built query, as the builders' `target` takes one."""

    def __init__(self, query: cogvariants.Dataquery) -> None:
        self.query = query

    def build(self) -> cogvariants.Dataquery:
        return self.query


def scope(w: Maintenance) -> str:
    streams = ", ".join(w.streams) if w.streams else "every stream"
    contracts = "contract breaches muted too" if w.mute_contracts else "contract breaches loud"
    return f"{streams}: pages and tickets muted, {contracts}; the figures go on"


def cron(w: Weekly) -> dict[str, str]:
    """Grafana's cron-mode time region of a weekly window."""
    hours, minutes = w.start.split(":")
    days = ",".join(str(_CRON_DAYS[d]) for d in w.days)
    start, end = w.minutes
    return {
        "mode": "cron",
        "cronExpr": f"{int(minutes)} {int(hours)} * * {days}",
        # Grafana reads a duration's parts split on spaces: "1h 30m", not "1h30m".
        "duration": " ".join(re.findall(r"\d+[a-z]", format_duration((end - start) * 60))),
        "timezone": w.time_zone,
    }


def once_expr(w: Once) -> str:
    return f"vector(time()) >= {int(w.start.timestamp())} < {int(w.end.timestamp())}"


def annotation(w: Maintenance, prometheus: common.DataSourceRef) -> dashboard.AnnotationQuery:
    name = f"Maintenance: {w.name}"
    query = dashboard.AnnotationQuery().name(name).enable(True).hide(False).icon_color(COLOR)
    if isinstance(w.when, Weekly):
        return query.datasource(GRAFANA).target(_Query(TimeRegions(cron(w.when))))
    return (
        query.datasource(prometheus)
        .expr(once_expr(w.when))
        .step("60s")
        .title_format(name)
        .text_format(f"{w.when.start.isoformat()} to {w.when.end.isoformat()}; {scope(w)}")
    )


def maintenance_annotations(spec: Spec, prometheus: common.DataSourceRef) -> list[Any]:
    return [annotation(w, prometheus) for w in spec.maintenance]
