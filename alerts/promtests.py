"""`promtool test rules` files that prove the generated alerts, from the same window table.

Every input series is sampled at the spec's scrape interval, as Prometheus
would scrape the collector, and misses a scrape now and then: at a missed
scrape every series of the collector is stale (a failed scrape writes
staleness markers), as in a real Prometheus. So a window too short to hold
two samples gives no ratio and its tier fails its test. (One exception:
promtool loads at most 10,000 samples in a query, so the tier file of a
window of days at a short interval, 3d at 15 s, samples at a multiple of
the scrape interval; the burn file, which proves the windows, never does.)

- Per SLO and burn-rate tier, the counters burn at a constant error ratio 1 %
  above and 1 % below the tier's threshold (`factor * error budget`); at the
  end of the tier's long window plus its short one the exact set of
  `MsgtallyErrorBudgetBurn` alerts is checked: the tier fires above and not
  below, every other tier exactly when the ratio is over its own threshold.
- Per SLO, a burn of 20 times the budget from the first scrape pages within
  each page tier's short window plus two scrape intervals, and stays paging
  at every evaluation after that, through missed scrapes (Prometheus's own
  ALERTS series, counted over a subquery); a burn of half the budget never
  pages. These scrapes fall half an interval off the rule evaluations, as
  they do in a real Prometheus: a window of `n` intervals then holds `n`
  samples (not `n + 1`), so a window of one interval never holds two.
- A quiet file proves that counters that do not move fire nothing, and that
  missing counters fire `MsgtallySLIAbsent`; a contracts file, that each
  forbidden breach pages at once, rides out a missed scrape and clears, and
  that consumers configured against a contract open a ticket at once (retry.py),
  through a missed scrape, until they are configured right.

One file per tier (its evaluation interval fits its windows), the burn file,
the quiet file and the contracts file; `rule_files` points at the rule file
relative to the test files.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from msgtally.names import (
    ABSENT_ALERT,
    BACKLOG,
    BURN_ALERT,
    CONTRACT_ALERT,
    CONTRADICTS_CONTRACT,
    FINDINGS,
    INDICATORS,
    LAST_PASS,
    RECONCILE_RECORDS,
    RECORDS_DROPPED,
    RECORDS_MISSING,
    RETRY_CONTRADICTION_ALERT,
    RETRY_FINDINGS,
    SLI_RECORD,
    RatioIndicator,
    bucket_label,
    counter,
)
from msgtally.slis.spec.budget import error_budget
from msgtally.slis.spec.model import SLO, Contract, Spec
from msgtally.slis.spec.semantics import BREACH_COUNTS, FORBIDS, Breach

from . import selfmon
from .contracts import WINDOW_SECONDS, breach_alert
from .promql import PRODUCED, quote
from .retry import contradiction_alert
from .rules import absent_alert, burn_alert, num, sli_labels
from .windows import (
    SAMPLES_PER_WINDOW,
    Window,
    floor,
    format_duration,
    keep_firing_for,
    spec_windows,
)

EVENTS = 1_000_000  # events per sample step: fine enough for a 1 % margin at any budget
MARGIN = 0.01  # "just above" and "just below": 1 % off the threshold
# The burn tests: a burn of BURN times the budget pages, one of CALM times never does.
BURN = 20.0
CALM = 0.5
# One scrape in MISS_EVERY is missed in the burn tests: every stretch of one more scrape
# than the shortest window holds (SAMPLES_PER_WINDOW) has a missed one.
MISS_EVERY = SAMPLES_PER_WINDOW + 1
# promtool refuses a query that loads more than 10,000 samples of a series; a series of
# a test stays below this many.
PROMTOOL_SAMPLES = 9_000
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


def scrape_values(per_step: int, steps: int, miss_every: int, start: int = 0) -> str:
    """promtool values of a counter scraped `steps + 1` times, growing by `per_step` a
    scrape from `start`, one scrape in `miss_every` missed (`stale`, never the first)."""
    parts: list[str] = []
    first = 0
    for k in range(miss_every - 1, steps + 1, miss_every):
        parts += [_run(start, per_step, first, k - 1), "stale"]
        first = k + 1
    if first <= steps:
        parts.append(_run(start, per_step, first, steps))
    return " ".join(parts)


def _run(start: int, per_step: int, first: int, last: int) -> str:
    """Scrapes `first` to `last` of a counter, in promtool's `a+bxn` notation."""
    return f"{start + first * per_step}+{per_step}x{last - first}"


def input_series(
    slo: SLO, errors: int, steps: int, miss_every: int, *, plain: bool = False
) -> list[dict[str, str]]:
    """The SLO's counters growing by EVENTS a scrape, `errors` of them bad, scraped
    `steps + 1` times with one scrape in `miss_every` missed (`plain`: the growth per
    scrape alone, as the values)."""
    labels = _series_labels(slo)
    good = EVENTS - errors

    def series(name: str, per_step: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "series": _selector(name, {**labels, **(extra or {})}),
            "values": str(per_step) if plain else scrape_values(per_step, steps, miss_every),
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


def tier_interval(w: Window) -> int:
    """A tier file's evaluation interval: the recordings are increases over the raw
    counters, so a steady burn needs no evaluation before the one checked; evaluating
    every `gcd(long, short)` makes the end of both windows evaluations."""
    return math.gcd(w.long, w.short)


def duration_ms(ms: int) -> str:
    """Milliseconds as a Prometheus duration: 7500 -> 7s500ms, 60000 -> 1m."""
    seconds, rest = divmod(ms, 1000)
    text = format_duration(seconds) if seconds else ""
    return text + (f"{rest}ms" if rest else "") or "0s"


def tier_sampling(spec: Spec, w: Window) -> int:
    """The scrape interval, or the smallest multiple of it that keeps a tier's windows
    (its long one and the period's, at the end of the test) within what promtool loads
    in one query: a 3d window scraped every 15 s is 17,280 samples."""
    scrape = spec.scrape_interval
    return scrape * -(-(w.long + w.short) // (scrape * PROMTOOL_SAMPLES))


def tier_tests(spec: Spec, w: Window, windows: tuple[Window, ...]) -> list[dict[str, Any]]:
    scrape = tier_sampling(spec, w)
    eval_at = w.long + w.short
    steps = eval_at // scrape
    # The tier's own short window holds a missed scrape.
    miss_every = max(MISS_EVERY, w.short // scrape)
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
                    "interval": format_duration(scrape),
                    "input_series": input_series(slo, errors, steps, miss_every),
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


def _label_set(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={quote(v)}" for k, v in labels.items()) + "}"


def paged_by(spec: Spec, w: Window) -> int:
    """When a burn from the first scrape must page: within the tier's short window plus
    two scrape intervals."""
    return w.short + 2 * spec.scrape_interval


def _pages(slo: SLO, windows: tuple[Window, ...]) -> list[Window]:
    return [w for w in windows if w.severity == "page" and _enabled(slo, w)]


def offset_values(per_step: int, steps: int, miss_every: int) -> str:
    """Like `scrape_values`, for a series whose `interval` is half the scrape interval:
    each scrape half an interval off the evaluations (every other slot empty)."""
    return " ".join(
        "_ " + ("stale" if k % miss_every == miss_every - 1 else str(k * per_step))
        for k in range(steps + 1)
    )


def burn_tests(spec: Spec, windows: tuple[Window, ...]) -> list[dict[str, Any]]:
    """Per SLO: BURN times the budget pages in time and stays paging; CALM times never
    pages. Scraped at the spec's interval, half an interval off the evaluations (each
    window of `n` intervals holds `n` samples, not the `n + 1` of a scrape that falls on
    the evaluation), one scrape in MISS_EVERY missed."""
    scrape = spec.scrape_interval
    every = format_duration(scrape)
    # The horizon: past the slowest page's deadline, through another missed scrape.
    horizon = max(paged_by(spec, w) for w in windows if w.severity == "page")
    horizon += MISS_EVERY * scrape
    steps = horizon // scrape
    half = duration_ms(scrape * 500)

    def series(slo: SLO, errors: int) -> list[dict[str, str]]:
        return [
            {"series": x["series"], "values": offset_values(int(x["values"]), steps, MISS_EVERY)}
            for x in input_series(slo, errors, 0, MISS_EVERY, plain=True)
        ]

    tests: list[dict[str, Any]] = []
    for slo in spec.slos:
        if slo.alerting.disable:
            continue
        budget = error_budget(slo.objective)
        burn = round(BURN * budget * EVENTS)
        pages = _pages(slo, windows)
        if pages and burn <= EVENTS:
            checks, continuity = [], []
            for w in pages:
                at = paged_by(spec, w)
                checks.append(
                    {
                        "eval_time": format_duration(at),
                        "alertname": BURN_ALERT,
                        "exp_alerts": burn_alerts_at(spec, slo, windows, burn / EVENTS),
                    }
                )
                labels = {
                    "alertname": BURN_ALERT,
                    "alertstate": "firing",
                    **sli_labels(spec, slo),
                    **burn_alert(spec, slo, w)["labels"],
                }
                continuity.append(
                    {
                        # Firing at every evaluation from its deadline to the horizon.
                        "expr": f"count_over_time({_selector('ALERTS', labels)}"
                        f"[{format_duration(horizon - at)}:{every}])",
                        "eval_time": format_duration(horizon),
                        "exp_samples": [
                            {"labels": _label_set(labels), "value": (horizon - at) // scrape + 1}
                        ],
                    }
                )
            tests.append(
                {
                    "name": f"{slo.name}: a burn of {num(BURN)}x the budget pages within "
                    "each page tier's short window plus two scrape intervals, and stays paging",
                    "interval": half,
                    "input_series": series(slo, burn),
                    "alert_rule_test": checks,
                    "promql_expr_test": continuity,
                }
            )
        calm = math.floor(CALM * budget * EVENTS)
        pages_selector = _selector(
            "ALERTS",
            {"alertname": BURN_ALERT, "service": spec.service, "slo": slo.name,
             "severity": "page"},
        )  # fmt: skip
        tests.append(
            {
                "name": f"{slo.name}: a burn of {num(CALM)}x the budget never pages",
                "interval": half,
                "input_series": series(slo, calm),
                "alert_rule_test": [
                    {
                        "eval_time": format_duration(horizon),
                        "alertname": BURN_ALERT,
                        "exp_alerts": burn_alerts_at(spec, slo, windows, calm / EVENTS),
                    }
                ],
                "promql_expr_test": [
                    {
                        # Not one evaluation with a page, pending or firing.
                        "expr": f"count_over_time({pages_selector}[{format_duration(horizon)}"
                        f":{every}])",
                        "eval_time": format_duration(horizon),
                        "exp_samples": [],
                    }
                ],
            }
        )
    return tests


def quiet_tests(spec: Spec, windows: tuple[Window, ...]) -> list[dict[str, Any]]:
    scrape = spec.scrape_interval
    eval_at = max(w.short for w in windows)
    steps = eval_at // scrape
    flat = [
        {"series": s["series"], "values": scrape_values(0, steps, MISS_EVERY, start=1000)}
        for slo in spec.slos
        for s in [
            *input_series(slo, 1, 1, MISS_EVERY),
            {"series": _selector(PRODUCED, _series_labels(slo))},
        ]
    ]
    flat = list({s["series"]: s for s in flat}.values())
    interval = quiet_interval(windows)
    absent_at = 2 * interval + max(
        (_seconds(absent_alert(spec, s, windows)["for"]) for s in spec.slos), default=0
    )
    absent = [
        _expected(absent_alert(spec, s, windows), {}) for s in spec.slos if not s.alerting.disable
    ]
    return [
        {
            "name": "zero traffic: counters that do not move fire nothing",
            "interval": format_duration(scrape),
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
            "interval": format_duration(scrape),
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


def quiet_interval(windows: tuple[Window, ...]) -> int:
    """Evaluations every shortest window (the absent alert's `for` is two of them), so
    that the longest short window ends on one."""
    return math.gcd(min(w.short for w in windows), max(w.short for w in windows))


def _seconds(duration: str) -> int:
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", duration))


def generate_tests(spec: Spec, rule_file: str) -> dict[str, TestFile]:
    """File name -> `promtool test rules` file, for the rules of `spec` at `rule_file`."""
    windows = spec_windows(spec)
    files: dict[str, TestFile] = {}
    for w in windows:
        tests = tier_tests(spec, w, windows)
        if tests:
            files[f"{spec.service}.{w.severity}-{w.long_text}.test.yml"] = {
                "rule_files": [rule_file],
                "evaluation_interval": format_duration(tier_interval(w)),
                "tests": tests,
            }
    burns = burn_tests(spec, windows)
    if burns:
        files[f"{spec.service}.burn.test.yml"] = {
            "rule_files": [rule_file],
            "evaluation_interval": format_duration(spec.scrape_interval),
            "tests": burns,
        }
    if spec.slos:
        files[f"{spec.service}.quiet.test.yml"] = {
            "rule_files": [rule_file],
            "evaluation_interval": format_duration(quiet_interval(windows)),
            "tests": quiet_tests(spec, windows),
        }
    files[f"{spec.service}.self.test.yml"] = {
        "rule_files": [rule_file],
        "evaluation_interval": format_duration(spec.scrape_interval),
        "tests": self_tests(spec),
    }
    if spec.contracts:
        files[f"{spec.service}.contracts.test.yml"] = {
            "rule_files": [rule_file],
            "evaluation_interval": format_duration(spec.scrape_interval),
            "tests": [*contract_tests(spec), *retry_tests(spec)],
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


def sample_values(scrapes: list[int | None]) -> str:
    """promtool values of a series, a scrape each: a value, or None for a missed scrape
    (stale); runs of a steady growth folded (`0+2x4` is 0 2 4 6 8, `1x3` is 1 1 1 1)."""
    parts: list[str] = []
    i = 0
    while i < len(scrapes):
        first = scrapes[i]
        if first is None:
            parts.append("stale")
            i += 1
            continue
        step = 0
        j = i
        nxt = scrapes[i + 1] if i + 1 < len(scrapes) else None
        if nxt is not None:
            step = nxt - first
            j = i + 1
            while j + 1 < len(scrapes):
                here, then = scrapes[j], scrapes[j + 1]
                if here is None or then is None or then - here != step:
                    break
                j += 1
        n = j - i
        if n == 0 or (n == 1 and step != 0):  # a lone value reads better alone
            parts.append(str(first))
            i += 1
            continue
        elif step == 0:
            parts.append(f"{first}x{n}")
        else:
            parts.append(f"{first}{step:+d}x{n}")
        i = j + 1
    return " ".join(parts)


def contract_tests(spec: Spec) -> list[dict[str, Any]]:
    """Per contract, one loss and one duplicate, scraped at the spec's interval: the
    forbidden one pages at once with its count, rides out a missed scrape, and clears
    once the window and keep_firing_for have passed, with no second page when the
    window looks back to the missed scrape; the allowed one never fires; a series first
    seen with a forbidden breach pages too; counters that do not move fire nothing."""
    s = spec.scrape_interval
    window = -(-WINDOW_SECONDS // s)  # scrapes until the breach leaves the window
    keep = keep_firing_for(s) // s
    breach_at = 2 * window + 1  # the scrape that counts the breach, after some history
    missed = breach_at + max(1, min(keep + 1, window - 1))  # while the page fires
    end = missed + window + 1
    # Past the window the page keeps firing for keep_firing_for, then clears.
    cleared = missed - breach_at >= keep

    def at(scrape: int) -> str:
        return format_duration(scrape * s) if scrape else "0s"

    def counts(value: int, first: int = 0) -> list[int | None]:
        return [None if k == missed else (value if k >= breach_at else 0) for k in
                range(first, end + 1)]  # fmt: skip

    tests: list[dict[str, Any]] = []
    idle: list[dict[str, str]] = []
    for contract in spec.contracts:
        labels = _contract_labels(spec, contract)
        for breach in Breach:
            forbidden = breach in FORBIDS[contract.semantics]
            expected = [_expected(breach_alert(spec, contract, breach), labels, 1)]
            names = [(b, _selector(counter(BREACH_COUNTS[b]), labels)) for b in Breach]
            tests.append(
                {
                    "name": f"{labels['stream']} / {labels['group']} "
                    f"({contract.semantics.value}): one {breach.value} "
                    + ("pages" if forbidden else "is allowed"),
                    "interval": format_duration(s),
                    "input_series": [
                        {"series": name, "values": sample_values(counts(int(b is breach)))}
                        for b, name in names
                    ],
                    "alert_rule_test": [
                        {
                            "eval_time": at(t),
                            "alertname": CONTRACT_ALERT,
                            "exp_alerts": exp if forbidden else [],
                        }
                        for t, exp in (
                            (breach_at, expected),
                            (missed, expected),
                            (missed + window, [] if cleared else expected),
                            (end, []),
                        )
                    ],
                }
            )
            if forbidden:
                young = [
                    {
                        "series": name,
                        "values": f"_x{breach_at} "
                        + sample_values(counts(int(b is breach), breach_at)),
                    }
                    for b, name in names
                ]
                tests.append(
                    {
                        "name": f"{labels['stream']} / {labels['group']} "
                        f"({contract.semantics.value}): first seen with a {breach.value}",
                        "interval": format_duration(s),
                        "input_series": young,
                        "alert_rule_test": [
                            {"eval_time": at(breach_at), "alertname": CONTRACT_ALERT,
                             "exp_alerts": expected},
                            {"eval_time": at(end), "alertname": CONTRACT_ALERT, "exp_alerts": []},
                        ],
                    }
                )  # fmt: skip
        idle += [
            {
                "series": _selector(counter(BREACH_COUNTS[b]), labels),
                "values": sample_values([None if k == missed else 7 for k in range(end + 1)]),
            }
            for b in Breach
        ]
    tests.append(
        {
            "name": "idle streams: breach counters that do not move fire nothing",
            "interval": format_duration(s),
            "input_series": idle,
            "alert_rule_test": [
                {"eval_time": at(t), "alertname": CONTRACT_ALERT, "exp_alerts": []}
                for t in (breach_at, missed, missed + window)
            ],
        }
    )
    return tests


def _at(seconds: int) -> str:
    return format_duration(seconds) if seconds else "0s"


def self_tests(spec: Spec) -> list[dict[str, Any]]:
    """The rules on msgtally itself, scraped at the spec's interval, with a missed scrape
    (every series of the job stale) where it would hurt: in a `for`, or while firing."""
    s = spec.scrape_interval
    job = {"job": spec.collector_job, "instance": "collector:8410"}
    every = format_duration(s)
    rules = selfmon.self_rules(spec)

    def rule(name: str) -> dict[str, Any]:
        (found,) = (r for r in rules if r["alert"] == name)
        return found

    def series(name: str, values: list[int | None], **labels: str) -> dict[str, str]:
        return {"series": _selector(name, {**job, **labels}), "values": sample_values(values)}

    def check(scrape: int, name: str, expected: list[Any]) -> dict[str, Any]:
        return {"eval_time": _at(scrape * s), "alertname": name, "exp_alerts": expected}

    def scrapes(seconds: int) -> int:
        return -(-seconds // s)

    def missing(values: list[int], missed: int) -> list[int | None]:
        return [None if k == missed else v for k, v in enumerate(values)]

    tests: list[dict[str, Any]] = []

    # The collector is down from scrape 10, after one failed scrape at 3 that pages nothing.
    down = 10
    fires = down + scrapes(selfmon.DOWN_FOR)
    up = [0 if k == 3 or k >= down else 1 for k in range(fires + 2)]
    tests += [
        {
            "name": "a collector down pages after 5m; one failed scrape does not",
            "interval": every,
            "input_series": [series("up", list(up))],
            "alert_rule_test": [
                check(down, selfmon.COLLECTOR_DOWN, []),
                check(fires - 1, selfmon.COLLECTOR_DOWN, []),
                check(fires, selfmon.COLLECTOR_DOWN,
                      [_expected(rule(selfmon.COLLECTOR_DOWN), job)]),
            ],
        },
        {
            "name": "no target of the job at all pages after 5m",
            "interval": every,
            "input_series": [],
            "alert_rule_test": [
                check(scrapes(selfmon.DOWN_FOR) - 1, selfmon.COLLECTOR_DOWN, []),
                check(scrapes(selfmon.DOWN_FOR), selfmon.COLLECTOR_DOWN,
                      [_expected(rule(selfmon.COLLECTOR_DOWN),
                                 {"job": spec.collector_job, "instance": selfmon.NO_TARGET})]),
            ],
        },
    ]  # fmt: skip

    # The engine passes at every scrape up to `last`, then stops while 5 records wait;
    # a scrape is missed while the alert is pending.
    last = 3
    active = (last * s + selfmon.STALL_AFTER) // s + 1  # the first evaluation past it
    fires = active + scrapes(selfmon.STALL_FOR)
    n, missed = fires + 2, active + 1
    stopped = missing([min(k, last) * s for k in range(n)], missed)
    waiting = missing([5] * n, missed)
    tests += [
        {
            "name": "an engine that stops while records wait pages 5m into the stall",
            "interval": every,
            "input_series": [series(LAST_PASS, stopped), series(BACKLOG, waiting)],
            "alert_rule_test": [
                check(fires - 1, selfmon.STALLED, []),
                check(fires, selfmon.STALLED, [_expected(rule(selfmon.STALLED), {})]),
            ],
        },
        {
            "name": "an engine that never passed while records wait pages too",
            "interval": every,
            "input_series": [series(BACKLOG, waiting)],
            "alert_rule_test": [
                check(fires, selfmon.STALLED,
                      [_expected(rule(selfmon.STALLED), {"job": spec.collector_job})]),
            ],
        },
        {
            "name": "an engine that passes while records wait is fine",
            "interval": every,
            "input_series": [
                series(LAST_PASS, missing([k * s for k in range(n)], missed)),
                series(BACKLOG, waiting),
            ],
            "alert_rule_test": [check(fires, selfmon.STALLED, [])],
        },
        {
            "name": "an idle engine (no pass, nothing waits) is fine",
            "interval": every,
            "input_series": [
                series(LAST_PASS, stopped), series(BACKLOG, missing([0] * n, missed))
            ],
            "alert_rule_test": [check(fires, selfmon.STALLED, [])],
        },
    ]  # fmt: skip

    # The backlog grows by 100 records a scrape while the engine applies 10 a scrape.
    active = scrapes(selfmon.GROWING_OVER)
    fires = active + scrapes(selfmon.GROWING_FOR)
    n, missed = fires + 2, fires - 1
    applied = f"{RECONCILE_RECORDS}_total"
    tests += [
        {
            "name": "a backlog that keeps growing opens a ticket after 15m",
            "interval": every,
            "input_series": [
                series(BACKLOG, missing([100 * k for k in range(n)], missed)),
                series(applied, missing([10 * k for k in range(n)], missed), result="new"),
                series(applied, missing([0] * n, missed), result="repeat"),
            ],
            "alert_rule_test": [
                check(fires - 1, selfmon.BACKLOG_GROWING, []),
                check(fires, selfmon.BACKLOG_GROWING,
                      [_expected(rule(selfmon.BACKLOG_GROWING), {})]),
            ],
        },
        {
            "name": "a steady backlog, or a growing one the engine clears in minutes, is fine",
            "interval": every,
            "input_series": [
                series(BACKLOG, [500] * n),
                series(BACKLOG, [100 * k for k in range(n)], instance="b:8410"),
                series(applied, [100_000 * k for k in range(n)], result="new"),
            ],
            "alert_rule_test": [check(fires, selfmon.BACKLOG_GROWING, [])],
        },
    ]  # fmt: skip

    # Three log rows quarantined at scrape 4, a scrape missed at 5.
    quarantine = missing([3 if k >= 4 else 0 for k in range(7)], 5)
    expected = [_expected(rule(selfmon.QUARANTINE), {}, 3)]
    tests.append(
        {
            "name": "quarantined log rows open a ticket at once, through a missed scrape",
            "interval": every,
            "input_series": [series(selfmon.QUARANTINED, quarantine)],
            "alert_rule_test": [
                check(3, selfmon.QUARANTINE, []),
                check(4, selfmon.QUARANTINE, expected),
                check(5, selfmon.QUARANTINE, expected),
            ],
        }
    )

    # Shims drop 2 produce records a scrape from scrape 4 to 9 (a scrape missed at 7),
    # and 1 consume record of group billing goes missing a scrape; then none, until
    # 3 more are dropped once the window has passed.
    window = scrapes(selfmon.LOSS_WINDOW) + scrapes(floor(s))
    later = 10 + window + 1
    n = later + 2
    drops = missing([2 * min(max(k - 3, 0), 6) + 3 * (k >= later) for k in range(n)], 7)
    gaps = missing([min(max(k - 3, 0), 6) for k in range(n)], 7)
    produce = {"stream": "orders", "kind": "produce"}
    consume = {"stream": "orders", "group": "billing", "kind": "consume"}
    dropped, gone = (r for r in rules if r["alert"] == selfmon.MEASUREMENT_LOSS)
    tests.append(
        {
            "name": "records dropped or missing open a ticket for 15m, with their count",
            "interval": every,
            "input_series": [
                series(f"{RECORDS_DROPPED}_total", drops, group="", **produce),
                series(f"{RECORDS_MISSING}_total", gaps, **consume),
            ],
            "alert_rule_test": [
                check(3, selfmon.MEASUREMENT_LOSS, []),
                # the missed scrape: the counts of the scrape before
                check(7, selfmon.MEASUREMENT_LOSS,
                      [_expected(dropped, produce, 6), _expected(gone, consume, 3)]),
                check(9, selfmon.MEASUREMENT_LOSS,
                      [_expected(dropped, produce, 12), _expected(gone, consume, 6)]),
                check(later - 1, selfmon.MEASUREMENT_LOSS, []),
                check(later, selfmon.MEASUREMENT_LOSS, [_expected(dropped, produce, 3)]),
            ],
        }
    )  # fmt: skip
    return tests


def retry_tests(spec: Spec) -> list[dict[str, Any]]:
    """Per contract, two consumer instances configured against it from one scrape on
    (the gauge the collector's audit exposes): the ticket fires at that scrape with
    their count, rides out a missed scrape, and clears keep_firing_for after they are
    configured right; the other findings alone (instances that drift, ack before
    processing on a stream allowed to, ...) open no ticket."""
    s = spec.scrape_interval
    keep = keep_firing_for(s) // s
    wrong, missed = 3, 4  # the scrape that first shows the finding; one missed after it
    fixed = missed + 2  # the first scrape showing 0 again
    end = fixed + keep + 2

    def at(scrape: int) -> str:
        return format_duration(scrape * s) if scrape else "0s"

    def values(inside: int) -> str:
        return sample_values(
            [None if k == missed else (inside if wrong <= k < fixed else 0) for k in range(end + 1)]
        )

    tests: list[dict[str, Any]] = []
    for contract in spec.contracts:
        labels = _contract_labels(spec, contract)
        name = f"{labels['stream']} / {labels['group']} ({contract.semantics.value})"
        expected = [_expected(contradiction_alert(spec, contract), labels, 2)]
        gauges = [
            {
                "series": _selector(RETRY_FINDINGS, {**labels, "finding": finding}),
                "values": values(2 if finding == CONTRADICTS_CONTRACT else 0),
            }
            for finding in FINDINGS
        ]
        others = [
            {"series": _selector(RETRY_FINDINGS, {**labels, "finding": finding}),
             "values": values(0 if finding == CONTRADICTS_CONTRACT else 3)}
            for finding in FINDINGS
        ]  # fmt: skip
        tests += [
            {
                "name": f"{name}: consumers configured against the contract open a ticket",
                "interval": format_duration(s),
                "input_series": gauges,
                "alert_rule_test": [
                    {"eval_time": at(t), "alertname": RETRY_CONTRADICTION_ALERT,
                     "exp_alerts": exp}
                    for t, exp in (
                        (wrong - 1, []),
                        (wrong, expected),
                        (missed, expected),
                        (fixed + keep - 1, expected),
                        (fixed + keep + 1, []),
                    )
                ],
            },
            {
                "name": f"{name}: other retry-configuration findings open no ticket",
                "interval": format_duration(s),
                "input_series": others,
                "alert_rule_test": [
                    {"eval_time": at(t), "alertname": RETRY_CONTRADICTION_ALERT,
                     "exp_alerts": []}
                    for t in (wrong, missed, fixed - 1)
                ],
            },
        ]  # fmt: skip
    return tests



