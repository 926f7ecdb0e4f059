"""`promtool test rules` files that prove the generated alerts, from the same window table.

For each SLO and burn-rate tier, two test groups feed the SLO's counters at a
constant error ratio of 1 % above and 1 % below the tier's threshold
(`factor * error budget`) and check, at the end of the tier's long window
plus its short one, the exact set of `MsgtallyErrorBudgetBurn` alerts: the
tier fires above and not below, and every other tier fires exactly when the
same ratio is over its own threshold. A quiet file proves that counters that
do not move fire nothing, and that missing counters fire `MsgtallySLIAbsent`.

One file per tier (its evaluation interval fits its windows) and one quiet
file; `rule_files` points at the rule file relative to the test files.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from msgtally.names import (
    ABSENT_ALERT,
    BURN_ALERT,
    CONTRACT_ALERT,
    INDICATORS,
    SLI_RECORD,
    RatioIndicator,
    bucket_label,
    counter,
)
from msgtally.slis.spec.budget import error_budget
from msgtally.slis.spec.model import SLO, Contract, Spec
from msgtally.slis.spec.semantics import BREACH_COUNTS, FORBIDS, Breach

from .contracts import breach_alert
from .promql import PRODUCED, quote
from .rules import absent_alert, burn_alert, num, sli_labels
from .windows import Window, format_duration, scale

EVENTS = 1_000_000  # events per sample step: fine enough for a 1 % margin at any budget
MARGIN = 0.01  # "just above" and "just below": 1 % off the threshold
STEPS_PER_SHORT = 5  # samples within the shortest window of a file
# `{{ $labels.NAME }}`, `{{ $labels.NAME | urlquery }}` and `{{ $value }}`.
_TEMPLATE = re.compile(
    r"\{\{\s*(?:\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)(\s*\|\s*urlquery)?|\$value)\s*\}\}"
)
TestFile = dict[str, Any]


def _series_labels(slo: SLO) -> dict[str, str]:
    return {"stream": slo.stream, "group": slo.group or "any-group"}


def _selector(name: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f"{k}={quote(v)}" for k, v in labels.items())
    return f"{name}{{{inner}}}"


def input_series(slo: SLO, errors: int, steps: int) -> list[dict[str, str]]:
    """The SLO's counters growing by EVENTS per step, `errors` of them bad."""
    labels = _series_labels(slo)
    good = EVENTS - errors

    def series(name: str, per_step: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "series": _selector(name, {**labels, **(extra or {})}),
            "values": f"0+{per_step}x{steps}",
        }

    ind = INDICATORS[slo.sli]
    if isinstance(ind, RatioIndicator):
        return [series(counter(c), n) for c, n in _ratio_steps(ind, errors).items()]
    assert slo.threshold is not None
    return [
        series(f"{ind.histogram}_count", EVENTS),
        series(f"{ind.histogram}_bucket", good, {"le": bucket_label(slo.threshold)}),
    ]


def _ratio_steps(ind: RatioIndicator, errors: int) -> dict[str, int]:
    """Per-step increase of each counter of a ratio: EVENTS in total, `errors` of them bad.

    The first error counter takes the errors, the first other total counter
    the rest (all of the events when errors are not part of the total).
    """
    steps = dict.fromkeys(ind.total, 0)
    rest = [c for c in ind.total if c not in ind.errors]
    steps[rest[0]] = EVENTS - errors if ind.errors[0] in ind.total else EVENTS
    steps |= {c: 0 for c in ind.errors if c not in steps}
    steps[ind.errors[0]] = errors
    return steps


def errors_for(slo: SLO, w: Window, above: bool) -> int | None:
    """Bad events per step that put the error ratio 1 % above (or below) the tier's threshold.

    None above a threshold of 100 % errors or more (a 90 % objective cannot burn
    at 14.4x): such a tier can never fire, and all errors is tested below it.
    """
    threshold = w.factor * error_budget(slo.objective) * EVENTS
    if above:
        errors = math.ceil(threshold * (1 + MARGIN))
        return errors if errors <= EVENTS else None
    errors = min(EVENTS, math.floor(threshold * (1 - MARGIN)))
    if errors <= 0:
        raise ValueError(f"SLO {slo.name}: the budget is too small to burn below {w.factor}x")
    return errors


def _expand(text: str, labels: Mapping[str, str], value: float | None = None) -> str:
    """What Prometheus makes of an annotation: labels (Go's urlquery is quote_plus) and,
    where the test knows it, the value."""

    def one(m: re.Match[str]) -> str:
        if m[1] is None:
            if value is None:
                raise ValueError(f"annotation {text!r}: this test cannot predict $value")
            return num(value)
        label = labels.get(m[1], "")
        return urllib.parse.quote_plus(label) if m[2] else label

    out = _TEMPLATE.sub(one, text)
    if "{{" in out:
        raise ValueError(
            f"annotation {text!r}: promtool tests can only predict {{{{ $labels.NAME }}}} "
            "and {{{{ $value }}}} templates; write the tests by hand or drop the template"
        )
    return out


def _expected(
    rule: Mapping[str, Any], series_labels: Mapping[str, str], value: float | None = None
) -> dict[str, Any]:
    labels = {**series_labels, **rule["labels"]}
    return {
        "exp_labels": labels,
        "exp_annotations": {
            k: _expand(v, labels, value) for k, v in rule["annotations"].items()
        },
    }


def _matches(other: SLO, slo: SLO) -> bool:
    """Does `other` read the series generated for `slo`?"""
    return (
        other.sli is slo.sli
        and other.stream == slo.stream
        and other.group in (None, _series_labels(slo)["group"])
        and other.threshold == slo.threshold
    )


def _enabled(slo: SLO, w: Window) -> bool:
    a = slo.alerting
    return not a.disable and not (a.page.disable if w.severity == "page" else a.ticket.disable)


def burn_alerts_at(spec: Spec, slo: SLO, windows: tuple[Window, ...], ratio: float) -> list[Any]:
    """Every burn alert that fires when `slo`'s series burn at a constant error ratio."""
    out = []
    for other in spec.slos:
        if not _matches(other, slo):
            continue
        for w in windows:
            if _enabled(other, w) and ratio > w.factor * error_budget(other.objective):
                out.append(_expected(burn_alert(spec, other, w), sli_labels(spec, other)))
    return out


def _interval(windows: tuple[Window, ...]) -> int:
    return max(1, min(w.short for w in windows) // STEPS_PER_SHORT)


def tier_tests(spec: Spec, w: Window, windows: tuple[Window, ...]) -> list[dict[str, Any]]:
    interval = _interval((w,))
    eval_at = w.long + w.short
    steps = eval_at // interval
    tests = []
    for slo in spec.slos:
        if not _enabled(slo, w):
            continue
        for above in (True, False):
            errors = errors_for(slo, w, above)
            if errors is None:
                continue
            side = "above" if above else "below"
            tests.append(
                {
                    "name": f"{slo.name}: {side} {num(w.factor)}x over {w.long_text} "
                    f"and {w.short_text} ({w.severity})",
                    "interval": format_duration(interval),
                    "input_series": input_series(slo, errors, steps),
                    "alert_rule_test": [
                        {
                            "eval_time": format_duration(eval_at),
                            "alertname": BURN_ALERT,
                            "exp_alerts": burn_alerts_at(spec, slo, windows, errors / EVENTS),
                        }
                    ],
                }
            )
    return tests


def quiet_tests(spec: Spec, windows: tuple[Window, ...]) -> list[dict[str, Any]]:
    # Two or three samples in the shortest window are enough to prove that a
    # counter that does not move gives no sample, in every window.
    interval = max(1, min(w.short for w in windows) * 2 // 5)
    eval_at = max(w.short for w in windows)
    steps = eval_at // interval
    flat = [
        {"series": s["series"], "values": f"1000+0x{steps}"}
        for slo in spec.slos
        for s in [*input_series(slo, 1, 1), {"series": _selector(PRODUCED, _series_labels(slo))}]
    ]
    flat = list({s["series"]: s for s in flat}.values())
    absent_at = 2 * interval + max(
        (_seconds(absent_alert(spec, s, windows)["for"]) for s in spec.slos), default=0
    )
    absent = [
        _expected(absent_alert(spec, s, windows), {}) for s in spec.slos if not s.alerting.disable
    ]
    return [
        {
            "name": "zero traffic: counters that do not move fire nothing",
            "interval": format_duration(interval),
            "input_series": flat,
            "alert_rule_test": [
                {"eval_time": format_duration(eval_at), "alertname": name, "exp_alerts": []}
                for name in (BURN_ALERT, ABSENT_ALERT)
            ],
            # No traffic is no sample: never NaN, never +Inf, in any window.
            "promql_expr_test": [
                {
                    "expr": f'{{__name__=~"{SLI_RECORD}.+"}}',
                    "eval_time": format_duration(eval_at),
                    "exp_samples": [],
                }
            ],
        },
        {
            "name": "no counters at all: every SLO's SLI is absent",
            "interval": format_duration(interval),
            "input_series": [],
            "alert_rule_test": [
                {
                    "eval_time": format_duration(absent_at),
                    "alertname": BURN_ALERT,
                    "exp_alerts": [],
                },
                {
                    "eval_time": format_duration(absent_at),
                    "alertname": ABSENT_ALERT,
                    "exp_alerts": absent,
                },
            ],
        },
    ]


def _seconds(duration: str) -> int:
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", duration))


def generate_tests(spec: Spec, rule_file: str) -> dict[str, TestFile]:
    """File name -> `promtool test rules` file, for the rules of `spec` at `rule_file`."""
    windows = scale(spec.period.seconds)
    files: dict[str, TestFile] = {}
    for w in windows:
        tests = tier_tests(spec, w, windows)
        if tests:
            files[f"{spec.service}.{w.severity}-{w.long_text}.test.yml"] = {
                "rule_files": [rule_file],
                "evaluation_interval": format_duration(_interval((w,))),
                "tests": tests,
            }
    if spec.slos:
        files[f"{spec.service}.quiet.test.yml"] = {
            "rule_files": [rule_file],
            "evaluation_interval": quiet_tests(spec, windows)[0]["interval"],
            "tests": quiet_tests(spec, windows),
        }
    if spec.contracts:
        files[f"{spec.service}.contracts.test.yml"] = {
            "rule_files": [rule_file],
            "evaluation_interval": "1m",
            "tests": contract_tests(spec),
        }
    return files


def _contract_labels(spec: Spec, contract: Contract) -> dict[str, str]:
    """Series a contract covers: its group, or a group of the stream without its own."""
    if contract.group is not None:
        return {"stream": contract.stream, "group": contract.group}
    group = "any-group"
    while group in spec.own_groups(contract.stream):
        group += "-other"
    return {"stream": contract.stream, "group": group}


def contract_tests(spec: Spec) -> list[dict[str, Any]]:
    """Per contract, one loss and one duplicate (minute 11): the forbidden one pages at
    once with its count and stops when the window has passed; the allowed one never
    fires; a series first seen with a forbidden breach pages too; counters that do
    not move fire nothing."""
    tests: list[dict[str, Any]] = []
    idle: list[dict[str, str]] = []
    for contract in spec.contracts:
        labels = _contract_labels(spec, contract)
        for breach in Breach:
            forbidden = breach in FORBIDS[contract.semantics]
            expected = [_expected(breach_alert(spec, contract, breach), labels, 1)]
            series = [
                {
                    "series": _selector(counter(BREACH_COUNTS[b]), labels),
                    "values": "0x10 1x10" if b is breach else "0x20",
                }
                for b in Breach
            ]
            tests.append(
                {
                    "name": f"{labels['stream']} / {labels['group']} "
                    f"({contract.semantics.value}): one {breach.value} "
                    + ("pages" if forbidden else "is allowed"),
                    "interval": "1m",
                    "input_series": series,
                    "alert_rule_test": [
                        {
                            "eval_time": "11m",
                            "alertname": CONTRACT_ALERT,
                            "exp_alerts": expected if forbidden else [],
                        },
                        {"eval_time": "16m", "alertname": CONTRACT_ALERT, "exp_alerts": []},
                    ],
                }
            )
            if forbidden:
                young = [{**s, "values": "_x5 " + s["values"].split(" ")[-1]} for s in series]
                tests.append(
                    {
                        "name": f"{labels['stream']} / {labels['group']} "
                        f"({contract.semantics.value}): first seen with a {breach.value}",
                        "interval": "1m",
                        "input_series": young,
                        "alert_rule_test": [
                            {"eval_time": "8m", "alertname": CONTRACT_ALERT,
                             "exp_alerts": expected},
                            {"eval_time": "12m", "alertname": CONTRACT_ALERT, "exp_alerts": []},
                        ],
                    }
                )  # fmt: skip
        idle += [
            {"series": _selector(counter(BREACH_COUNTS[b]), labels), "values": "7+0x20"}
            for b in Breach
        ]
    tests.append(
        {
            "name": "idle streams: breach counters that do not move fire nothing",
            "interval": "1m",
            "input_series": idle,
            "alert_rule_test": [
                {"eval_time": "11m", "alertname": CONTRACT_ALERT, "exp_alerts": []}
            ],
        }
    )
    return tests
