"""Maintenance windows of the native spec: `maintenance:`, read and checked field by field.

    maintenance:
      - name: weekend-patching          # unique; Alertmanager's time interval name
        days: [saturday, sunday]        # recurring: days of the week (or monday:friday)
        start: "22:00"                  # times of day; an end not after the start
        end: "02:00"                    # crosses midnight (Saturday 22:00 - Sunday 02:00 ...)
        time_zone: Europe/Paris         # IANA, required for a recurring window
        streams: [orders]               # optional: these streams' alerts; else the service's
        mute_contracts: false           # contract breaches stay loud unless true
      - name: db-migration              # one-off: RFC 3339 start and end, with their offset
        start: 2025-06-14T22:00:00+02:00
        end: 2025-06-15T01:00:00+02:00

Every problem names its line and field: a day that is not one, a time that is
not one, an end before the start, a stream the spec does not measure, a time
zone that does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .fields import FieldReader
from .model import WEEKDAYS, Maintenance, Once, Weekly
from .yamldoc import Path

FIELDS = ("name", "days", "start", "end", "time_zone", "streams", "mute_contracts")
_TIME = re.compile(r"^([0-9]{2}):([0-9]{2})$")
_EXAMPLE = "2025-06-14T22:00:00+02:00"


def read_maintenance(
    r: FieldReader, top: dict[str, Any], streams: Collection[str]
) -> tuple[Maintenance, ...]:
    if "maintenance" not in top:
        return ()
    raw = top["maintenance"]
    if not isinstance(raw, list) or not raw:
        r.problem(("maintenance",), "must be a non-empty list of maintenance windows")
        return ()
    out: list[Maintenance] = []
    seen: dict[str, int | None] = {}
    for i, item in enumerate(raw):
        path: Path = ("maintenance", i)
        m = r.mapping(item, path, FIELDS, required=("name", "start", "end"))
        if m is None:
            continue
        name = r.name(m, "name", path)
        if name is not None and name in seen:
            r.problem(
                (*path, "name"),
                f"{name!r} names a second window (the first is at line {seen[name]}); "
                "names must be unique",
            )
            name = None
        elif name is not None:
            seen[name] = r.doc.line((*path, "name"))
        when = _weekly(r, m, path) if "days" in m else _once(r, m, path)
        covered = _streams(r, m, path, streams)
        mute = r.boolean(m, "mute_contracts", path)
        if name is not None and when is not None and covered is not None:
            out.append(Maintenance(name=name, when=when, streams=covered, mute_contracts=mute))
    return tuple(out)


def _streams(
    r: FieldReader, m: dict[str, Any], path: Path, known: Collection[str]
) -> tuple[str, ...] | None:
    if "streams" not in m:
        return ()
    raw = m["streams"]
    if not isinstance(raw, list) or not raw:
        r.problem((*path, "streams"), "must be a non-empty list of streams (omit it for the "
                  "whole service)")  # fmt: skip
        return None
    out: list[str] = []
    for j, stream in enumerate(raw):
        where = (*path, "streams", j)
        if not isinstance(stream, str) or not stream:
            r.problem(where, "must be a stream's name")
        elif stream not in known:
            r.problem(
                where,
                f"stream {stream!r} is not measured by this spec "
                f"(streams: {', '.join(sorted(known)) or 'none'})",
            )
        else:
            out.append(stream)
    return tuple(sorted(set(out))) if len(out) == len(raw) else None


def _days(r: FieldReader, raw: Any, path: Path) -> tuple[str, ...] | None:
    if not isinstance(raw, list) or not raw:
        r.problem(path, "must be a non-empty list of days of the week, e.g. [saturday, sunday]")
        return None
    days: set[int] = set()
    ok = True
    for j, item in enumerate(raw):
        where = (*path, j)
        text = item.lower() if isinstance(item, str) else None
        bounds = text.split(":") if text is not None else []
        if len(bounds) in (1, 2) and all(b in WEEKDAYS for b in bounds):
            first, last = WEEKDAYS.index(bounds[0]), WEEKDAYS.index(bounds[-1])
            if first <= last:
                days |= set(range(first, last + 1))
                continue
            r.problem(where, f"{item!r}: a range of days goes forward in the week (monday to "
                      "sunday)")  # fmt: skip
        else:
            r.problem(
                where,
                f"{item!r} is not a day of the week ({', '.join(WEEKDAYS)}; or a range, "
                "e.g. monday:friday)",
            )
        ok = False
    return tuple(WEEKDAYS[d] for d in sorted(days)) if ok else None


def _time_of_day(r: FieldReader, m: dict[str, Any], key: str, path: Path) -> str | None:
    value = m[key]
    match = _TIME.match(value) if isinstance(value, str) else None
    latest = 24 * 60 if key == "end" else 24 * 60 - 1
    if match and int(match[2]) < 60 and int(match[1]) * 60 + int(match[2]) <= latest:
        return str(value)
    r.problem(
        (*path, key),
        f"has value {value!r}. Must be a time of day, HH:MM from 00:00 to 23:59"
        + (" (or 24:00, the end of the day)" if key == "end" else ""),
    )
    return None


def _weekly(r: FieldReader, m: dict[str, Any], path: Path) -> Weekly | None:
    days = _days(r, m["days"], (*path, "days"))
    start = _time_of_day(r, m, "start", path) if "start" in m else None
    end = _time_of_day(r, m, "end", path) if "end" in m else None
    if start is not None and end is not None and start == end:
        r.problem((*path, "end"), f"is the start ({start}): the window would be empty")
        end = None
    zone = _zone(r, m, path)
    if days is None or start is None or end is None or zone is None:
        return None
    return Weekly(days=days, start=start, end=end, time_zone=zone)


def _zone(r: FieldReader, m: dict[str, Any], path: Path) -> str | None:
    if "time_zone" not in m:
        r.problem(path, "missing required field 'time_zone' for a recurring window (days), "
                  "e.g. Europe/Paris or UTC")  # fmt: skip
        return None
    name = r.string(m, "time_zone", path)
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        r.problem((*path, "time_zone"), f"unknown time zone {name!r} (an IANA name, e.g. "
                  "Europe/Paris, America/New_York, UTC)")  # fmt: skip
        return None
    return name


def _timestamp(r: FieldReader, m: dict[str, Any], key: str, path: Path) -> datetime | None:
    value = m[key]
    where = (*path, key)
    try:
        if not isinstance(value, str) or len(value) < 16 or value[10] not in "Tt ":
            raise ValueError
        stamp = datetime.fromisoformat(value)
    except ValueError:
        r.problem(where, f"has value {value!r}. Must be an RFC 3339 timestamp with its UTC "
                  f"offset, e.g. {_EXAMPLE} (or days, start and end times for a recurring "
                  "window)")  # fmt: skip
        return None
    if stamp.tzinfo is None:
        r.problem(where, f"{value!r} has no UTC offset: add Z or one like +02:00")
        return None
    if stamp.second or stamp.microsecond:
        r.problem(where, f"{value!r} must fall on a whole minute (Alertmanager's time "
                  "intervals count minutes)")  # fmt: skip
        return None
    return stamp


def _once(r: FieldReader, m: dict[str, Any], path: Path) -> Once | None:
    if "time_zone" in m:
        r.problem((*path, "time_zone"), "only for a recurring window (days): a one-off "
                  "window's start and end carry their UTC offset")  # fmt: skip
    start = _timestamp(r, m, "start", path) if "start" in m else None
    end = _timestamp(r, m, "end", path) if "end" in m else None
    if start is not None and end is not None and end <= start:
        r.problem(
            (*path, "end"),
            f"{m['end']} is {'the start' if end == start else 'before the start'} "
            f"({m['start']}): the window would be empty",
        )
        return None
    if start is None or end is None or "time_zone" in m:
        return None
    return Once(start=start, end=end)
