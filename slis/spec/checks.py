"""The checks every spec loader shares: period, unique names, SLI kind, objective, threshold.

Each loader (native, OpenSLO) reads its own format and calls these, so a
value is accepted or refused the same way whatever format it came in.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, TypeVar

from msgtally.names import SLIKind, bucket_label

from .fields import FieldReader
from .model import (
    DEFAULT_PERIOD,
    DEFAULT_SCRAPE_INTERVAL,
    FLOOR_FITS,
    RESERVED_SLO_NAMES,
    SLO,
    WINDOW_SCRAPES,
    Alerting,
    Contract,
    Period,
    parse_interval,
)
from .yamldoc import Path, Problem

E = TypeVar("E", bound=StrEnum)


def read_period(r: FieldReader, m: dict[str, Any], key: str, path: Path) -> Period | None:
    text = m.get(key, DEFAULT_PERIOD)
    try:
        return Period.parse(text if isinstance(text, str) else repr(text))
    except ValueError as exc:
        r.problem((*path, key), str(exc))
        return None


def read_scrape_interval(
    r: FieldReader, m: dict[str, Any], path: Path, period: Period | None, override: int | None
) -> int | None:
    """The scrape interval: `override` (from --scrape-interval) else the spec's
    `scrape_interval`, else the default; four of them must fit ten times in the period."""
    key = "scrape_interval"
    if override is not None:
        seconds = override
    elif key in m:
        raw = m[key]
        try:
            seconds = parse_interval(raw if isinstance(raw, str) else repr(raw))
        except ValueError as exc:
            r.problem((*path, key), str(exc))
            return None
    else:
        seconds = DEFAULT_SCRAPE_INTERVAL
    if period is not None and WINDOW_SCRAPES * seconds * FLOOR_FITS > period.seconds:
        most = period.seconds // (WINDOW_SCRAPES * FLOOR_FITS)
        message = (
            f"{_interval_text(seconds)} is too long for a {period.text} period: no window is "
            f"shorter than {WINDOW_SCRAPES} scrape intervals, and {FLOOR_FITS} such windows "
            f"must fit in the period (at most {_interval_text(most)} for {period.text})"
        )
        if override is not None:
            r.problems.append(Problem(None, "--scrape-interval", message))
        else:
            r.problem((*path, key), message)
        return None
    return seconds


def _interval_text(seconds: int) -> str:
    out = ""
    for unit, size in (("h", 3_600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            out += f"{n}{unit}"
    return out or "0s"


def check_unique(r: FieldReader, names: list[Any], paths: list[Path]) -> None:
    seen: set[str] = set()
    for name, path in zip(names, paths, strict=False):
        if not isinstance(name, str):
            continue
        if name in seen:
            r.slo = name
            r.problem(path, f"SLO name {name!r} is used twice; names must be unique")
            r.slo = None
        seen.add(name)


def read_choice(r: FieldReader, choices: type[E], value: Any, path: Path) -> E | None:
    """One of an enum's values (SLI kind, semantics), or a problem listing them."""
    try:
        return choices(value)
    except ValueError:
        r.problem(path, f"has value {value!r}. Must be one of: {', '.join(choices)}.")
        return None


def check_slo(
    r: FieldReader,
    path: Path,
    buckets: Sequence[float],
    *,
    name: str | None,
    stream: str | None,
    group: str | None,
    sli: SLIKind | None,
    objective: float | None,
    threshold: float | None,
    threshold_given: bool,
    description: str | None = None,
    alerting: Alerting | None = None,
    threshold_path: Path | None = None,
    name_path: Path | None = None,
) -> SLO | None:
    """The checks every loader shares: objective range, latency threshold vs buckets."""
    threshold_path = threshold_path or (*path, "threshold")
    if name in RESERVED_SLO_NAMES:
        r.problem(
            name_path or (*path, "name"),
            f"{name!r} names a rule group of msgtally's own (reserved: "
            f"{', '.join(sorted(RESERVED_SLO_NAMES))})",
        )
        name = None
    if objective is not None and not 0 < objective < 100:
        r.problem((*path, "objective"), f"{objective:g} is not a percentage above 0 and below 100")
        objective = None
    if sli is SLIKind.LATENCY:
        if not threshold_given:
            r.problem(path, "missing required field 'threshold' (seconds) for sli latency")
        elif threshold is not None and threshold not in buckets:
            r.problem(
                threshold_path,
                f"{threshold:g} s is not a bucket bound of the collector's latency histogram "
                f"(bounds: {', '.join(bucket_label(b) for b in buckets)}); add it to the "
                "collector's buckets (msgtally serve --latency-buckets) and pass the same "
                "--buckets here",
            )
            threshold = None
    elif threshold_given and sli is not None:
        r.problem(threshold_path, f"only for sli latency, not {sli.value}")
        threshold = None
    if name is None or stream is None or sli is None or objective is None:
        return None
    if sli is SLIKind.LATENCY and threshold is None:
        return None
    return SLO(
        name=name,
        stream=stream,
        group=group,
        sli=sli,
        objective=objective,
        threshold=threshold if sli is SLIKind.LATENCY else None,
        description=description,
        alerting=alerting or Alerting(),
    )


def check_contracts(
    r: FieldReader, contracts: Sequence[Contract], paths: Sequence[Path], slo_streams: set[str]
) -> None:
    """One contract per (stream, group); with SLOs, only on a stream they measure (a typo
    there would leave a contract that never fires)."""
    seen: dict[tuple[str, str | None], Path] = {}
    for contract, path in zip(contracts, paths, strict=True):
        key = (contract.stream, contract.group)
        where = f"group {contract.group!r}" if contract.group else "every group"
        if key in seen:
            first = r.doc.line(seen[key])
            r.problem(
                path,
                f"stream {contract.stream!r}, {where}: a second contract (the first is at "
                f"line {first}); one contract per stream and group",
            )
        seen.setdefault(key, path)
        if slo_streams and contract.stream not in slo_streams:
            r.problem(
                (*path, "stream"),
                f"stream {contract.stream!r} is not measured by any SLO of this spec "
                f"(streams: {', '.join(sorted(slo_streams))})",
            )
