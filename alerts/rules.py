"""Generate Prometheus rules from an SLO spec: pure, returns plain data.

Per SLO, one rule group `msgtally-<service>-<slo>`, in evaluation order:
- `msgtally:sli_error:ratio_rate<window>` for every window the alerts use and
  for the whole period;
- metadata: objective, error budget, period, period burn rate and remaining
  budget;
- `MsgtallyErrorBudgetBurn` once per burn-rate tier (labels `severity`,
  `burn_window`) and `MsgtallySLIAbsent`.
Then `msgtally-<service>-contracts` (contracts.py, and retry.py's ticket on
consumers configured against a contract), when the spec has any,
and `msgtally-<service>-self`, the rules that watch msgtally itself (selfmon.py).
One group per SLO, not three: rules of a group run in order, so an alert always reads
the recordings of the same evaluation, whatever the evaluation interval.
Every series carries `service`, `slo`, `sli`, `stream`, `group` and the
spec's labels, so alerts and dashboards select one SLO by `service` and `slo`.
"""

from __future__ import annotations

from typing import Any

from msgtally.names import (
    ABSENT_ALERT,
    BUDGET_RECORD,
    BURN_ALERT,
    OBJECTIVE_RECORD,
    PERIOD_BURN_RECORD,
    PERIOD_RECORD,
    REMAINING_RECORD,
    SLI_RECORD,
)
from msgtally.slis.spec.budget import error_budget, objective_ratio
from msgtally.slis.spec.model import SLO, Spec

from .contracts import GROUP_NAME as CONTRACT_GROUP
from .contracts import contract_rules
from .promql import error_ratio, presence, quote
from .retry import retry_rules
from .selfmon import GROUP_NAME as SELF_GROUP
from .selfmon import self_rules
from .windows import Window, format_duration, keep_firing_for, rule_windows, spec_windows

Rule = dict[str, Any]
Group = dict[str, Any]


def num(value: float) -> str:
    """A number as PromQL and YAML show it best: 14.4, 6, 0.001."""
    text = repr(float(value))
    return text.removesuffix(".0")


def sli_labels(spec: Spec, slo: SLO) -> dict[str, str]:
    """The labels of every series of one SLO."""
    return {
        "service": spec.service,
        "slo": slo.name,
        "sli": slo.sli.value,
        "stream": slo.stream,
        "group": slo.group_label,
        **dict(sorted(spec.labels.items())),
    }


def _select(spec: Spec, slo: SLO) -> str:
    return f"{{service={quote(spec.service)},slo={quote(slo.name)}}}"


def sli_rules(spec: Spec, slo: SLO, windows: tuple[Window, ...]) -> list[Rule]:
    return [
        {
            "record": f"{SLI_RECORD}{format_duration(w)}",
            "expr": error_ratio(slo, format_duration(w)),
            "labels": sli_labels(spec, slo),
        }
        for w in rule_windows(windows, spec.period.seconds)
    ]


def meta_rules(spec: Spec, slo: SLO) -> list[Rule]:
    labels = sli_labels(spec, slo)
    budget = num(error_budget(slo.objective))
    period = f"{SLI_RECORD}{spec.period.text}{_select(spec, slo)}"
    burn = f"{PERIOD_BURN_RECORD}{_select(spec, slo)}"
    return [
        {
            "record": OBJECTIVE_RECORD,
            "expr": f"vector({num(objective_ratio(slo.objective))})",
            "labels": labels,
        },
        {
            "record": BUDGET_RECORD,
            "expr": f"vector({budget})",
            "labels": labels,
        },
        {
            "record": PERIOD_RECORD,
            "expr": f"vector({spec.period.seconds})",
            "labels": labels,
        },
        {
            "record": PERIOD_BURN_RECORD,
            "expr": f"{period} / {budget}",
            "labels": labels,
        },
        {
            "record": REMAINING_RECORD,
            "expr": f"1 - {burn}",
            "labels": labels,
        },
    ]


def _what(spec: Spec, slo: SLO) -> str:
    group = f"group {slo.group}" if slo.group is not None else "every group"
    sli = slo.sli.value + (f" over {num(slo.threshold)}s" if slo.threshold is not None else "")
    return (
        f"SLO {slo.name} of {spec.service} ({sli} on stream {slo.stream}, {group}; "
        f"objective {num(slo.objective)}% over {spec.period.text})"
    )


def burn_alert(spec: Spec, slo: SLO, w: Window) -> Rule:
    budget = num(error_budget(slo.objective))
    limit = f"({num(w.factor)} * {budget})"
    sel = _select(spec, slo)
    notify = slo.alerting.page if w.severity == "page" else slo.alerting.ticket
    annotations = {
        "summary": f"{slo.name}: error budget burning over {num(w.factor)}x "
        f"({w.long_text} and {w.short_text})",
        "description": (f"{slo.description} " if slo.description else "")
        + f"{_what(spec, slo)}: the error ratio is above {num(w.factor)} times the budget "
        f"over {w.long_text} and {w.short_text}; at this rate {num(w.share * 100)}% of the "
        f"budget is spent in {w.long_text}.",
    }
    if slo.alerting.runbook:
        annotations["runbook_url"] = slo.alerting.runbook
    annotations.update(notify.annotations)
    # A page rides out a missed scrape (every series of the collector stale until the
    # next one) or an evaluation that sees a thin window: it does not resolve and page again.
    ride_out = (
        {"keep_firing_for": format_duration(keep_firing_for(spec.scrape_interval))}
        if w.severity == "page"
        else {}
    )
    return {
        "alert": BURN_ALERT,
        "expr": f"{SLI_RECORD}{w.long_text}{sel} > {limit}\n"
        f"and\n{SLI_RECORD}{w.short_text}{sel} > {limit}",
        **ride_out,
        # service and slo come with the recordings too; stated here so that each
        # rule of the file is unique (promtool's lint) and reads on its own.
        "labels": {
            "severity": w.severity,
            "burn_window": w.long_text,
            "service": spec.service,
            "slo": slo.name,
            **notify.labels,
        },
        "annotations": annotations,
    }


def absent_for(windows: tuple[Window, ...]) -> str:
    """How long the SLI may be missing before the ticket: twice the fastest short window."""
    return format_duration(2 * min(w.short for w in windows))


def absent_alert(spec: Spec, slo: SLO, windows: tuple[Window, ...]) -> Rule:
    annotations = {
        "summary": f"{slo.name}: no SLI ({presence(slo).split('{')[0]} is absent)",
        "description": f"{_what(spec, slo)}: the collector exposes no "
        f"{presence(slo)}; the SLO is not measured and its alerts cannot fire.",
    }
    if slo.alerting.runbook:
        annotations["runbook_url"] = slo.alerting.runbook
    annotations.update(slo.alerting.ticket.annotations)
    return {
        "alert": ABSENT_ALERT,
        "expr": f"absent({presence(slo)})",
        "for": absent_for(windows),
        "labels": {**sli_labels(spec, slo), "severity": "ticket", **slo.alerting.ticket.labels},
        "annotations": annotations,
    }


def alert_rules(spec: Spec, slo: SLO, windows: tuple[Window, ...]) -> list[Rule]:
    a = slo.alerting
    if a.disable:
        return []
    rules = [
        burn_alert(spec, slo, w)
        for w in windows
        if not (a.page.disable if w.severity == "page" else a.ticket.disable)
    ]
    return [*rules, absent_alert(spec, slo, windows)]


def generate(spec: Spec) -> dict[str, list[Group]]:
    """The rule file of a spec, as plain data ready for YAML."""
    windows = spec_windows(spec)
    groups: list[Group] = []
    for slo in spec.slos:
        rules = [
            *sli_rules(spec, slo, windows),
            *meta_rules(spec, slo),
            *alert_rules(spec, slo, windows),
        ]
        groups.append({"name": f"msgtally-{spec.service}-{slo.name}", "rules": rules})
    if spec.contracts:
        groups.append(
            {
                "name": CONTRACT_GROUP.format(service=spec.service),
                "rules": [*contract_rules(spec), *retry_rules(spec)],
            }
        )
    groups.append({"name": SELF_GROUP.format(service=spec.service), "rules": self_rules(spec)})
    return {"groups": groups}
