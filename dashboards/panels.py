"""Panels as plain data: what each dashboard shows, before the Grafana SDK builds it.

A dashboard is a list of rows; a row is panels whose widths add up to the
24 columns of Grafana's grid. `build` places them and turns them into JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

GRID_WIDTH = 24


class Kind(StrEnum):
    TIMESERIES = "timeseries"
    STAT = "stat"
    BARGAUGE = "bargauge"
    TABLE = "table"
    HEATMAP = "heatmap"


class Format(StrEnum):
    TIME_SERIES = "time_series"
    TABLE = "table"
    HEATMAP = "heatmap"


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    format: Format = Format.TIME_SERIES


@dataclass(frozen=True)
class Step:
    """A threshold: from `value` up (None: from minus infinity), shown in `color`."""

    value: float | None
    color: str


@dataclass(frozen=True)
class Panel:
    kind: Kind
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    width: int
    height: int = 8
    thresholds: tuple[Step, ...] = ()
    # timeseries: draw the thresholds as dashed lines (a burn rate against its factor)
    threshold_lines: bool = False
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    # the shortest $__interval (bars of counts per interval need a few scrapes each)
    interval: str | None = None
    # table: columns to hide
    hide_columns: tuple[str, ...] = field(default=())


Row = tuple[Panel, ...]

# Colours by name, as Grafana's palette has them.
RED, ORANGE, YELLOW, GREEN = "red", "orange", "yellow", "green"


def check_rows(rows: list[Row]) -> None:
    """Every row fills the grid exactly: no overlap, no ragged edge."""
    for row in rows:
        width = sum(p.width for p in row)
        if width != GRID_WIDTH:
            titles = ", ".join(p.title for p in row)
            raise ValueError(f"row ({titles}) is {width} columns wide, not {GRID_WIDTH}")
