"""The SLO spec as plain data: what an SRE declares once per service.

The loaders (`native` for `msgtally/v1`, `openslo` for OpenSLO) build these
objects; `msgtally.alerts` and `msgtally.dashboards` turn them into rules and boards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from msgtally.names import SLIKind

from .semantics import Semantics

VERSION = "msgtally/v1"
DEFAULT_PERIOD = "30d"
# Prometheus's own default scrape interval. Assuming longer than the real one only
# makes the windows of short periods a little longer; assuming shorter leaves
# windows that hold too few samples, and alerts that never fire: so the longest
# interval in common use, unless the spec (or --scrape-interval) says otherwise.
DEFAULT_SCRAPE_INTERVAL = 60
# No range window of the rules is shorter than this many scrape intervals (Prometheus's
# advice for rate and increase: two samples in the window, after a missed scrape or two).
WINDOW_SCRAPES = 4
# ... and the floor that makes must fit this many times in the SLO period (the slowest
# tier's window is a tenth of it: 3d of 30d).
FLOOR_FITS = 10
# The `group` label value of an SLO over every consumer group of its stream.
ALL_GROUPS = "*"
# Label names the rules set themselves: a spec may not set them.
RESERVED_LABELS = frozenset(
    {"slo", "sli", "service", "stream", "group", "severity", "burn_window", "alertname", "le",
     "semantics", "breach", "kind", "loss", "job", "instance"}
)  # fmt: skip
# SLO names whose rule group would be another's (`msgtally-<service>-<name>`).
RESERVED_SLO_NAMES = frozenset({"contracts", "self"})
# The Prometheus job that scrapes the collector, watched by the rules on msgtally itself.
DEFAULT_COLLECTOR_JOB = "msgtally"

_PERIOD = re.compile(r"^([1-9][0-9]*)([dh])$")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600}
_DURATION = re.compile(r"^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?$")


def parse_interval(text: str) -> int:
    """A scrape interval as Prometheus writes it, in whole seconds: `15s`, `1m`, `1m30s`."""
    match = _DURATION.match(text) if text else None
    seconds = 0
    if match:
        h, m, s = (int(g or 0) for g in match.groups())
        seconds = h * 3_600 + m * 60 + s
    if not seconds:
        raise ValueError(
            f"has value {text!r}. Must be a duration of whole seconds, at least 1s, "
            "e.g. 15s, 30s, 1m."
        )
    return seconds


_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def parse_duration(text: str) -> float:
    """A window or a retention: `5m`, `1h`, `7d`, `90s`, or plain seconds; > 0."""
    text = text.strip()
    unit = _UNITS.get(text[-1:], 0)
    try:
        seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{text!r} is not a duration (e.g. 5m, 1h, 7d, 90s, or seconds)")
    return seconds


@dataclass(frozen=True)
class Period:
    """An SLO period: a whole number of days or hours, e.g. `30d`, `12h`."""

    seconds: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.match(text)
        if not match:
            raise ValueError(
                f"period has value {text!r}. Must be a whole number of days or hours, "
                "e.g. 30d, 28d, 7d, 12h."
            )
        return cls(int(match[1]) * _UNIT_SECONDS[match[2]], text)


def _frozen(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Notify:
    """Extra labels and annotations of one severity's alerts; `disable` drops them."""

    labels: Mapping[str, str] = field(default_factory=lambda: _frozen(None))
    annotations: Mapping[str, str] = field(default_factory=lambda: _frozen(None))
    disable: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels))
        object.__setattr__(self, "annotations", _frozen(self.annotations))


@dataclass(frozen=True)
class Alerting:
    page: Notify = field(default_factory=Notify)
    ticket: Notify = field(default_factory=Notify)
    runbook: str | None = None
    disable: bool = False


@dataclass(frozen=True)
class SLO:
    name: str
    stream: str
    sli: SLIKind
    objective: float  # percent, 0 < objective < 100
    group: str | None = None  # None: every group of the stream
    threshold: float | None = None  # seconds; latency only
    description: str | None = None
    alerting: Alerting = field(default_factory=Alerting)

    @property
    def group_label(self) -> str:
        return self.group if self.group is not None else ALL_GROUPS


@dataclass(frozen=True)
class Contract:
    """The delivery semantics a stream (or one of its groups) promises."""

    stream: str
    semantics: Semantics
    group: str | None = None  # None: every group of the stream without its own contract

    @property
    def group_label(self) -> str:
        return self.group if self.group is not None else ALL_GROUPS


# Days of the week, in the week's order (Alertmanager's names).
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Weekly:
    """A recurring window: on each of `days`, from `start` to `end` (times of day, HH:MM),
    in `time_zone` (IANA). An end not after the start crosses midnight into the next day."""

    days: tuple[str, ...]  # WEEKDAYS, in the week's order
    start: str
    end: str  # "24:00" is the end of the day
    time_zone: str

    @property
    def minutes(self) -> tuple[int, int]:
        """Start and end in minutes of the day; the end past 1440 when it crosses midnight."""
        start, end = _minutes(self.start), _minutes(self.end)
        return start, end if end > start else end + 1440


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class Once:
    """A one-off window, from `start` to `end` (timezone-aware, whole minutes)."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Maintenance:
    """A maintenance window: alerts of the service (or of `streams`) are muted, not the
    measurement. Contract breaches stay loud unless `mute_contracts`."""

    name: str
    when: Weekly | Once
    streams: tuple[str, ...] = ()  # (): the whole service
    mute_contracts: bool = False


@dataclass(frozen=True)
class Spec:
    service: str
    slos: tuple[SLO, ...]
    period: Period = field(default_factory=lambda: Period.parse(DEFAULT_PERIOD))
    labels: Mapping[str, str] = field(default_factory=lambda: _frozen(None))
    contracts: tuple[Contract, ...] = ()
    scrape_interval: int = DEFAULT_SCRAPE_INTERVAL  # seconds, Prometheus's for the collector
    collector_job: str = DEFAULT_COLLECTOR_JOB
    maintenance: tuple[Maintenance, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels))

    def contract_for(self, stream: str, group: str) -> Contract | None:
        """A group's own contract, else its stream's, else None."""
        on_stream = [c for c in self.contracts if c.stream == stream]
        own = [c for c in on_stream if c.group == group]
        wide = [c for c in on_stream if c.group is None]
        for contract in (*own, *wide):
            return contract
        return None

    def own_groups(self, stream: str) -> tuple[str, ...]:
        """The groups of `stream` with a contract of their own."""
        return tuple(c.group for c in self.contracts if c.stream == stream and c.group)
