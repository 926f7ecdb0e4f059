"""The native spec format, `msgtally/v1`: one YAML document read into the spec model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msgtally.names import SLIKind

from .checks import (
    check_contracts,
    check_slo,
    check_unique,
    read_choice,
    read_period,
    read_scrape_interval,
)
from .fields import FieldReader
from .maintenance import read_maintenance
from .model import (
    ALL_GROUPS,
    DEFAULT_COLLECTOR_JOB,
    SLO,
    VERSION,
    Alerting,
    Contract,
    Notify,
    Spec,
)
from .semantics import Semantics
from .yamldoc import Doc, Path, Problem

_TOP = (
    "version",
    "service",
    "period",
    "scrape_interval",
    "collector_job",
    "labels",
    "slos",
    "contracts",
    "maintenance",
)
_SLO = ("name", "stream", "group", "sli", "objective", "threshold", "description", "alerting")
_ALERTING = ("page", "ticket", "runbook", "disable")
_NOTIFY = ("labels", "annotations", "disable")
_CONTRACT = ("stream", "group", "semantics")


def read_native(
    doc: Doc, buckets: Sequence[float], scrape_interval: int | None = None
) -> tuple[Spec | None, list[Problem]]:
    """A `msgtally/v1` document -> (Spec, problems); Spec is None when there are problems."""
    r = FieldReader(doc)
    top = r.mapping(doc.data, (), _TOP, required=("version", "service"))
    if top is None:
        return None, r.problems
    if "slos" not in top and "contracts" not in top:
        r.problem((), "needs 'slos', 'contracts' or both")
    version = top.get("version")
    if "version" in top and version != VERSION:
        r.problem(("version",), f"has value {version!r}. Must be {VERSION!r}.")
    service = r.name(top, "service", ())
    period = read_period(r, top, "period", ())
    scrape = read_scrape_interval(r, top, (), period, scrape_interval)
    job = r.string(top, "collector_job", ()) or DEFAULT_COLLECTOR_JOB
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
    contracts = _read_contracts(r, top, {slo.stream for slo in slos})
    streams = {slo.stream for slo in slos} | {c.stream for c in contracts}
    maintenance = read_maintenance(r, top, streams)
    if r.problems or service is None or period is None or scrape is None:
        return None, r.problems
    spec = Spec(
        service=service,
        period=period,
        labels=labels,
        slos=tuple(slos),
        contracts=contracts,
        scrape_interval=scrape,
        collector_job=job,
        maintenance=maintenance,
    )
    return spec, r.problems


def _read_contracts(
    r: FieldReader, top: dict[str, Any], slo_streams: set[str]
) -> tuple[Contract, ...]:
    if "contracts" not in top:
        return ()
    raw = top["contracts"]
    if not isinstance(raw, list) or not raw:
        r.problem(("contracts",), "must be a non-empty list of contracts")
        return ()
    contracts: list[Contract] = []
    paths: list[Path] = []
    for i, item in enumerate(raw):
        path: Path = ("contracts", i)
        m = r.mapping(item, path, _CONTRACT, required=("stream", "semantics"))
        if m is None:
            continue
        stream = r.string(m, "stream", path)
        group = r.string(m, "group", path)
        if group == ALL_GROUPS:
            r.problem((*path, "group"), f"{ALL_GROUPS!r} stands for every group: omit the field")
            continue
        semantics = read_choice(r, Semantics, m.get("semantics"), (*path, "semantics"))
        if stream is not None and semantics is not None:
            contracts.append(Contract(stream=stream, group=group, semantics=semantics))
            paths.append(path)
    check_contracts(r, contracts, paths, slo_streams)
    return tuple(contracts)


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
    sli = read_choice(r, SLIKind, m.get("sli"), (*path, "sli")) if "sli" in m else None
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
