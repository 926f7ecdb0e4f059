"""The native spec format, `msgtally/v1`: one YAML document read into the spec model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .checks import check_slo, check_unique, read_period, read_sli
from .fields import FieldReader
from .model import ALL_GROUPS, SLO, VERSION, Alerting, Notify, Spec
from .yamldoc import Doc, Path, Problem

_TOP = ("version", "service", "period", "labels", "slos")
_SLO = ("name", "stream", "group", "sli", "objective", "threshold", "description", "alerting")
_ALERTING = ("page", "ticket", "runbook", "disable")
_NOTIFY = ("labels", "annotations", "disable")


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
