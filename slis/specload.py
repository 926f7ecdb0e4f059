"""Load and validate an SLO spec: `msgtally/v1` YAML, or OpenSLO (`openslo/v1`).

Every problem is reported with its place (line, SLO, field); a spec with any
problem raises SpecError listing all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path as FilePath
from typing import Any

from msgtally.reconcile.config import DEFAULT_BUCKETS, bucket_label

from .fields import FieldReader
from .spec import ALL_GROUPS, DEFAULT_PERIOD, SLO, VERSION, Alerting, Notify, Period, SLIKind, Spec
from .yamldoc import Doc, Path, Problem, SpecError, parse_documents

_TOP = ("version", "service", "period", "labels", "slos")
_SLO = ("name", "stream", "group", "sli", "objective", "threshold", "description", "alerting")
_ALERTING = ("page", "ticket", "runbook", "disable")
_NOTIFY = ("labels", "annotations", "disable")


def load_spec(
    text: str, *, buckets: Sequence[float] = DEFAULT_BUCKETS, source: str = "spec"
) -> Spec:
    """A spec from YAML text, native or OpenSLO; raises SpecError with every problem."""
    docs = list(_documents(text, source))
    first = docs[0].data if docs else None
    if isinstance(first, dict) and "apiVersion" in first:
        from .openslo import read_openslo

        spec, problems = read_openslo(docs, buckets)
    elif len(docs) == 1:
        spec, problems = read_native(docs[0], buckets)
    else:
        line = docs[1].line(()) if len(docs) > 1 else 1
        spec, problems = None, [Problem(line, "(document)", "a spec is one YAML document")]
    if problems or spec is None:
        raise SpecError(problems or [Problem(1, "(document)", "empty spec")], source)
    return spec


def read_spec_file(path: str | FilePath, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> Spec:
    path = FilePath(path)
    return load_spec(path.read_text(encoding="utf-8"), buckets=buckets, source=str(path))


def check_spec(
    text: str, *, buckets: Sequence[float] = DEFAULT_BUCKETS, source: str = "spec"
) -> list[Problem]:
    """Every problem of a spec; an empty list when it is valid."""
    try:
        load_spec(text, buckets=buckets, source=source)
    except SpecError as exc:
        return exc.problems
    return []


def _documents(text: str, source: str) -> list[Doc]:
    try:
        docs = list(parse_documents(text))
    except SpecError as exc:
        raise SpecError(exc.problems, source) from None
    if not docs:
        raise SpecError([Problem(1, "(document)", "empty spec")], source)
    return docs


def read_native(doc: Doc, buckets: Sequence[float]) -> tuple[Spec | None, list[Problem]]:
    """A `msgtally/v1` document -> (Spec, problems); Spec is None when there are problems."""
    r = FieldReader(doc)
    top = r.mapping(doc.data, (), _TOP, required=("version", "service", "slos"))
    if top is None:
        return None, r.problems
    version = top.get("version")
    if "version" in top and version != VERSION:
        r.problem(("version",), f"has value {version!r}. Must be {VERSION!r}.")
    service = r.name(top, "service", ())
    period = read_period(r, top, "period", ())
    labels = r.text_map(top, "labels", (), labels=True)
    slos: list[SLO] = []
    raw = top.get("slos")
    if "slos" in top and (not isinstance(raw, list) or not raw):
        r.problem(("slos",), "must be a non-empty list of SLOs")
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            slo = _read_slo(r, item, ("slos", i), buckets)
            r.slo = None
            if slo is not None:
                slos.append(slo)
        names = [i.get("name") if isinstance(i, dict) else None for i in raw]
        check_unique(r, names, [("slos", i, "name") for i in range(len(raw))])
    if r.problems or service is None or period is None:
        return None, r.problems
    return Spec(service=service, period=period, labels=labels, slos=tuple(slos)), r.problems


def read_period(r: FieldReader, m: dict[str, Any], key: str, path: Path) -> Period | None:
    text = m.get(key, DEFAULT_PERIOD)
    try:
        return Period.parse(text if isinstance(text, str) else repr(text))
    except ValueError as exc:
        r.problem((*path, key), str(exc))
        return None


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


def _read_slo(r: FieldReader, item: Any, path: Path, buckets: Sequence[float]) -> SLO | None:
    named = item.get("name") if isinstance(item, dict) else None
    r.slo = named if isinstance(named, str) else None
    m = r.mapping(item, path, _SLO, required=("name", "stream", "sli", "objective"))
    if m is None:
        return None
    name = r.name(m, "name", path)
    r.slo = name
    stream = r.string(m, "stream", path)
    group = r.string(m, "group", path)
    if group == ALL_GROUPS:
        r.problem((*path, "group"), f"{ALL_GROUPS!r} stands for every group: omit the field")
        group = None
    sli = read_sli(r, m.get("sli"), (*path, "sli")) if "sli" in m else None
    objective = r.number(m, "objective", path)
    threshold = r.number(m, "threshold", path)
    description = r.string(m, "description", path)
    alerting = _read_alerting(r, m, path)
    return check_slo(
        r,
        path,
        buckets,
        name=name,
        stream=stream,
        group=group,
        sli=sli,
        objective=objective,
        threshold=threshold,
        threshold_given="threshold" in m,
        description=description,
        alerting=alerting,
    )


def read_sli(r: FieldReader, value: Any, path: Path) -> SLIKind | None:
    try:
        return SLIKind(value)
    except ValueError:
        r.problem(path, f"has value {value!r}. Must be one of: {', '.join(SLIKind)}.")
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
) -> SLO | None:
    """The checks every loader shares: objective range, latency threshold vs buckets."""
    threshold_path = threshold_path or (*path, "threshold")
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


def _read_alerting(r: FieldReader, m: dict[str, Any], path: Path) -> Alerting:
    if "alerting" not in m:
        return Alerting()
    where = (*path, "alerting")
    a = r.mapping(m["alerting"], where, _ALERTING)
    if a is None:
        return Alerting()
    notify = {}
    for severity in ("page", "ticket"):
        n = r.mapping(a[severity], (*where, severity), _NOTIFY) if severity in a else {}
        n = n or {}
        notify[severity] = Notify(
            labels=r.text_map(n, "labels", (*where, severity), labels=True),
            annotations=r.text_map(n, "annotations", (*where, severity), labels=False),
            disable=r.boolean(n, "disable", (*where, severity)),
        )
    return Alerting(
        page=notify["page"],
        ticket=notify["ticket"],
        runbook=r.string(a, "runbook", where),
        disable=r.boolean(a, "disable", where),
    )
