"""Rule generation: table tests per step, the exact render, golden files under examples/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from msgtally.alerts.promql import error_ratio, le_matcher, matchers
from msgtally.alerts.render import render_rules
from msgtally.alerts.rules import alert_rules, generate, meta_rules, num, sli_rules
from msgtally.alerts.windows import (
    LADDER,
    TIERS,
    floor,
    format_duration,
    rule_windows,
    scale,
    snap,
)
from msgtally.names import BURN_ALERT, SLIKind
from msgtally.slis.spec.load import load_spec, read_spec_file
from msgtally.slis.spec.model import SLO, Alerting, Notify, Period, Spec
from tests.slo_examples import EXAMPLES, generated_tests_dir, outputs, spec_files, stem

DAY, HOUR = 86_400, 3_600


def table(period: str, scrape: int = 1) -> list[tuple[str, float, str, str]]:
    return [
        (w.severity, w.factor, w.long_text, w.short_text)
        for w in scale(Period.parse(period).seconds, scrape)
    ]


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        # The SRE Workbook's table.
        ("30d", [("page", 14.4, "1h", "5m"), ("page", 6.0, "6h", "30m"),
                 ("ticket", 3.0, "1d", "2h"), ("ticket", 1.0, "3d", "6h")]),
        # Same windows as 30d (56m snaps to 1h), factors for 28 days.
        ("28d", [("page", 13.44, "1h", "5m"), ("page", 5.6, "6h", "30m"),
                 ("ticket", 2.8, "1d", "2h"), ("ticket", 0.9333333333, "3d", "6h")]),
        ("7d", [("page", 13.44, "15m", "1m"), ("page", 8.4, "1h", "5m"),
                ("ticket", 2.8, "6h", "30m"), ("ticket", 0.9333333333, "18h", "2h")]),
        # A 12h period alerts on a 1-minute fast-burn window.
        ("12h", [("page", 14.4, "1m", "5s"), ("page", 6.0, "6m", "30s"),
                 ("ticket", 3.6, "20m", "2m"), ("ticket", 1.2, "1h", "5m")]),
    ],
)  # fmt: skip
def test_window_table_per_period(period: str, expected: list[tuple[str, float, str, str]]) -> None:
    """What the period alone gives (a 1-second scrape raises nothing here)."""
    assert table(period, scrape=1) == expected


# The effective windows at the usual scrape intervals (docs/alerts.md has this table):
# (severity, factor, long, short), every window at least four scrape intervals.
EFFECTIVE = {
    ("30d", 15): "page 14.4 1h 5m | page 6 6h 30m | ticket 3 1d 2h | ticket 1 3d 6h",
    ("30d", 60): "page 14.4 1h 5m | page 6 6h 30m | ticket 3 1d 2h | ticket 1 3d 6h",
    ("28d", 60): "page 13.44 1h 5m | page 5.6 6h 30m | ticket 2.8 1d 2h "
    "| ticket 0.9333333333 3d 6h",
    ("7d", 15): "page 13.44 15m 1m | page 8.4 1h 5m | ticket 2.8 6h 30m "
    "| ticket 0.9333333333 18h 2h",
    ("7d", 30): "page 13.44 15m 2m | page 8.4 1h 5m | ticket 2.8 6h 30m "
    "| ticket 0.9333333333 18h 2h",
    ("7d", 60): "page 13.44 15m 4m | page 8.4 1h 5m | ticket 2.8 6h 30m "
    "| ticket 0.9333333333 18h 2h",
    ("1d", 15): "page 14.4 2m 1m | page 6 12m 1m | ticket 3.2 45m 4m | ticket 1.2 2h 10m",
    ("1d", 30): "page 14.4 2m 2m | page 6 12m 2m | ticket 3.2 45m 4m | ticket 1.2 2h 10m",
    ("1d", 60): "page 14.4 4m 4m | page 6 12m 4m | ticket 3.2 45m 4m | ticket 1.2 2h 10m",
    ("12h", 15): "page 14.4 1m 1m | page 6 6m 1m | ticket 3.6 20m 2m | ticket 1.2 1h 5m",
    ("12h", 30): "page 14.4 2m 2m | page 6 6m 2m | ticket 3.6 20m 2m | ticket 1.2 1h 5m",
    ("12h", 60): "page 14.4 4m 4m | page 6 6m 4m | ticket 3.6 20m 4m | ticket 1.2 1h 5m",
    # The two page tiers get the same windows: one page, the lower factor's.
    ("1h", 15): "page 6 1m 1m | ticket 3 2m 1m | ticket 1 6m 1m",
    ("1h", 30): "page 6 2m 2m | ticket 3 2m 2m | ticket 1 6m 2m",
    ("1h", 60): "page 6 4m 4m | ticket 3 4m 4m | ticket 1 6m 4m",
}


@pytest.mark.parametrize(("period", "scrape"), list(EFFECTIVE), ids=lambda v: str(v))
def test_effective_windows_at_a_scrape_interval(period: str, scrape: int) -> None:
    got = " | ".join(
        f"{sev} {num(factor)} {long} {short}" for sev, factor, long, short in table(period, scrape)
    )
    assert got == EFFECTIVE[period, scrape]


def _docs_row(period: str, scrape: int) -> str:
    """A row of docs/alerts.md's table of effective windows."""
    cells: dict[str, list[str]] = {"page": [], "ticket": []}
    for w in scale(Period.parse(period).seconds, scrape):
        long = w.long_text + ("\\*" if w.long_raised else "")
        short = w.short_text + ("\\*" if w.short_raised else "")
        merged = f" (tiers {w.merged[0]} and {w.tier})" if w.merged else ""
        cells[w.severity].append(f"{num(round(w.factor, 2))}x {long} & {short}{merged}")
    pages = cells["page"] + [""] * (2 - len(cells["page"]))
    return f"| {period} | {scrape}s | " + " | ".join([*pages, *cells["ticket"]]) + " |"


def test_the_docs_table_of_effective_windows_is_the_generators() -> None:
    docs = (EXAMPLES.parent / "docs" / "alerts.md").read_text()
    for period in ("30d", "28d", "7d", "1d", "12h", "1h"):
        for scrape in (15, 30, 60):
            row = _docs_row(period, scrape).replace(" |  |", " | |")
            assert row in docs, row


def test_raised_windows_keep_the_factor_and_say_so() -> None:
    day = scale(DAY, 60)
    assert [(w.long_raised, w.short_raised) for w in day] == [
        (True, True), (False, True), (False, False), (False, False)
    ]  # fmt: skip
    page = day[0]
    assert (page.scaled_long, page.scaled_short, page.long, page.short) == (120, 10, 240, 240)
    assert page.factor == 14.4  # the period's factor, kept
    assert page.share == pytest.approx(0.04)  # twice the tier's 2 %: its window is twice as long
    hour = scale(HOUR, 60)
    assert [(w.tier, w.merged) for w in hour] == [(2, (1,)), (3, ()), (4, ())]


@pytest.mark.parametrize(
    ("period", "scrape"),
    [
        (period, scrape)
        for period in ("1h", "12h", "1d", "7d", "14d", "28d", "30d", "90d", "365d")
        for scrape in (1, 10, 15, 30, 60, 90, 120)
        # A longer scrape interval is refused by the spec's checks (test_spec.py).
        if 40 * scrape <= Period.parse(period).seconds
    ],
)
def test_every_tier_keeps_its_factor_and_at_least_its_share(period: str, scrape: int) -> None:
    seconds = Period.parse(period).seconds
    windows = scale(seconds, scrape)
    least = floor(scrape)
    assert least >= 4 * scrape
    for w in windows:
        base = TIERS[w.tier - 1].share
        assert w.factor * w.scaled_long / seconds == pytest.approx(base, rel=1e-9)
        assert w.factor * w.long / seconds == pytest.approx(w.share, rel=1e-9)
        assert w.share >= base - 1e-12
        assert least <= w.short <= w.long
        assert w.factor > 1 if w.severity == "page" else w.factor > 0.5
    tiers = [w.tier for w in windows] + [t for w in windows for t in w.merged]
    assert sorted(tiers) == [1, 2, 3, 4]
    keys = [(w.severity, w.long) for w in windows]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    ("seconds", "snapped"),
    [(56 * 60, HOUR), (84 * 60, HOUR), (14 * 60, 900), (75, 60), (0.2, 1), (5.6 * HOUR, 6 * HOUR),
     (16.8 * HOUR, 18 * HOUR), (2.8 * DAY, 3 * DAY), (DAY, DAY)],
)  # fmt: skip
def test_snap_to_readable_durations(seconds: float, snapped: int) -> None:
    assert snap(seconds) == snapped
    assert snapped in LADDER


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1s"), (300, "5m"), (5400, "1h30m"), (DAY, "1d"), (30 * DAY, "30d"), (DAY + 61, "1d1m1s")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


def test_recording_windows_are_the_alerts_and_the_period() -> None:
    seconds = 30 * DAY
    assert [format_duration(w) for w in rule_windows(scale(seconds), seconds)] == [
        "5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"
    ]  # fmt: skip


def slo(**kw: object) -> SLO:
    base: dict[str, object] = {
        "name": "o",
        "stream": "orders",
        "group": "billing",
        "sli": SLIKind.DELIVERY,
        "objective": 99.9,
    }
    base.update(kw)
    return SLO(**base)  # type: ignore[arg-type]


S = 'stream="orders",group="billing"'


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        (SLIKind.DELIVERY, {},
         f"sum(increase(msgtally_messages_lost_total{{{S}}}[5m]))\n/\n"
         f"(sum(increase(msgtally_messages_produced_total{{{S}}}[5m])) > 0)"),
        (SLIKind.RETRIES, {},
         f"sum(increase(msgtally_messages_retried_total{{{S}}}[5m]))\n/\n"
         f"(sum(increase(msgtally_messages_produced_total{{{S}}}[5m])) > 0)"),
        (SLIKind.DUPLICATES, {},
         f"sum(increase(msgtally_messages_duplicated_total{{{S}}}[5m]))\n/\n"
         f"(sum(increase(msgtally_messages_delivered_total{{{S}}}[5m])) + "
         f"sum(increase(msgtally_messages_late_total{{{S}}}[5m])) + "
         f"sum(increase(msgtally_messages_recovered_total{{{S}}}[5m])) + "
         f"sum(increase(msgtally_messages_duplicated_total{{{S}}}[5m])) > 0)"),
        (SLIKind.LATENCY, {"threshold": 2.5},
         f"(sum(increase(msgtally_delivery_latency_seconds_count{{{S}}}[5m])) - "
         f'sum(increase(msgtally_delivery_latency_seconds_bucket{{{S},le="2.5"}}[5m])))\n/\n'
         f"(sum(increase(msgtally_delivery_latency_seconds_count{{{S}}}[5m])) > 0)"),
    ],
)  # fmt: skip
def test_error_ratio_per_sli_kind(kind: SLIKind, extra: dict[str, float], expected: str) -> None:
    assert error_ratio(slo(sli=kind, **extra), "5m") == expected


def test_every_ratio_guards_its_denominator() -> None:
    for kind in SLIKind:
        expr = error_ratio(slo(sli=kind, threshold=1.0), "1h")
        assert expr.endswith("[1h])) > 0)")
        assert "avg_over_time" not in expr


def test_group_omitted_aggregates_every_group_of_the_stream() -> None:
    s = slo(group=None)
    assert matchers(s) == 'stream="orders"'
    assert s.group_label == "*"
    spec = Spec(service="svc", slos=(s,))
    for rule in sli_rules(spec, s, scale(spec.period.seconds)):
        assert rule["labels"]["group"] == "*"
        assert "group=" not in rule["expr"]


@pytest.mark.parametrize(
    ("threshold", "matcher"),
    [(2.5, 'le="2.5"'), (1.0, 'le=~"1|1\\\\.0"'), (300.0, 'le=~"300|300\\\\.0"'),
     (0.005, 'le="0.005"')],
)  # fmt: skip
def test_le_matcher_follows_the_collector(threshold: float, matcher: str) -> None:
    assert le_matcher(threshold) == matcher


def test_label_values_are_escaped() -> None:
    s = slo(stream='we"ird\\name')
    assert matchers(s).startswith('stream="we\\"ird\\\\name"')


def test_meta_rules() -> None:
    spec = Spec(service="svc", slos=(slo(),), labels={"team": "t"})
    rules = {r["record"]: r["expr"] for r in meta_rules(spec, spec.slos[0])}
    assert rules == {
        "msgtally:slo_objective:ratio": "vector(0.999)",
        "msgtally:slo_error_budget:ratio": "vector(0.001)",
        "msgtally:slo_period:seconds": "vector(2592000)",
        "msgtally:slo_period_burn_rate:ratio": (
            'msgtally:sli_error:ratio_rate30d{service="svc",slo="o"} / 0.001'
        ),
        "msgtally:slo_error_budget_remaining:ratio": (
            '1 - msgtally:slo_period_burn_rate:ratio{service="svc",slo="o"}'
        ),
    }


@pytest.mark.parametrize(
    ("alerting", "expected"),
    [
        (Alerting(), ["page 1h", "page 6h", "ticket 1d", "ticket 3d", "absent"]),
        (Alerting(page=Notify(disable=True)), ["ticket 1d", "ticket 3d", "absent"]),
        (Alerting(ticket=Notify(disable=True)), ["page 1h", "page 6h", "absent"]),
        (Alerting(disable=True), []),
    ],
)
def test_alert_rules_per_alerting_options(alerting: Alerting, expected: list[str]) -> None:
    s = slo(alerting=alerting)
    spec = Spec(service="svc", slos=(s,))
    got = [
        f"{r['labels']['severity']} {r['labels']['burn_window']}"
        if r["alert"] == BURN_ALERT
        else "absent"
        for r in alert_rules(spec, s, scale(spec.period.seconds))
    ]
    assert got == expected


def test_burn_alert_labels_annotations_no_for_and_pages_ride_out_a_missed_scrape() -> None:
    s = slo(
        alerting=Alerting(
            page=Notify(labels={"route": "pager"}, annotations={"summary": "mine"}),
            runbook="https://rb",
        )
    )
    spec = Spec(service="svc", slos=(s,))
    page = alert_rules(spec, s, scale(spec.period.seconds))[0]
    assert page["labels"] == {
        "severity": "page",
        "burn_window": "1h",
        "service": "svc",
        "slo": "o",
        "route": "pager",
    }
    assert page["annotations"]["summary"] == "mine"
    assert page["annotations"]["runbook_url"] == "https://rb"
    assert "for" not in page
    assert page["keep_firing_for"] == "2m"  # two scrape intervals (1m by default)
    ticket = alert_rules(spec, s, scale(spec.period.seconds))[2]
    assert ticket["labels"]["severity"] == "ticket"
    assert "keep_firing_for" not in ticket and "for" not in ticket
    assert page["expr"] == (
        'msgtally:sli_error:ratio_rate1h{service="svc",slo="o"} > (14.4 * 0.001)\n'
        "and\n"
        'msgtally:sli_error:ratio_rate5m{service="svc",slo="o"} > (14.4 * 0.001)'
    )
    absent = alert_rules(spec, s, scale(spec.period.seconds))[-1]
    assert (
        absent["expr"]
        == 'absent(msgtally_messages_produced_total{stream="orders",group="billing"})'
    )
    assert absent["for"] == "10m"
    assert absent["labels"]["severity"] == "ticket"


MINIMAL = """\
version: msgtally/v1
service: svc
period: 12h
scrape_interval: 15s
slos:
  - {name: o, stream: orders, group: billing, sli: delivery, objective: 99}
"""


def test_render_exact() -> None:
    text = render_rules(generate(load_spec(MINIMAL)), "svc")
    lines = text.splitlines()
    assert lines[0] == (
        "# Code generated by msgtally alerts from the SLO spec of service 'svc'. DO NOT EDIT."
    )
    assert lines[1:16] == [
        "groups:",
        "- name: msgtally-svc-o",
        "  rules:",
        "  - record: msgtally:sli_error:ratio_rate1m",
        "    expr: |-",
        '      sum(increase(msgtally_messages_lost_total{stream="orders",group="billing"}[1m]))',
        "      /",
        '      (sum(increase(msgtally_messages_produced_total{stream="orders",group="billing"}'
        "[1m])) > 0)",
        "    labels:",
        "      service: svc",
        "      slo: o",
        "      sli: delivery",
        "      stream: orders",
        "      group: billing",
        "  - record: msgtally:sli_error:ratio_rate2m",
    ]
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text) == generate(load_spec(MINIMAL))
    records = [r.get("record") for r in generate(load_spec(MINIMAL))["groups"][0]["rules"]]
    assert records[:8] == [
        f"msgtally:sli_error:ratio_rate{w}"
        for w in ("1m", "2m", "5m", "6m", "20m", "1h", "12h")
    ] + ["msgtally:slo_objective:ratio"]


def test_render_refuses_an_empty_rule_set() -> None:
    with pytest.raises(ValueError, match="no rules"):
        render_rules({"groups": []}, "svc")


def test_openslo_gives_the_same_rules_as_the_native_spec() -> None:
    native = read_spec_file(EXAMPLES / "inventory-28d.yml")
    openslo = read_spec_file(EXAMPLES / "inventory-28d.openslo.yml")
    assert openslo == native
    assert render_rules(generate(openslo), "inventory") == render_rules(
        generate(native), "inventory"
    )


@pytest.mark.parametrize("spec_path", spec_files(), ids=stem)
def test_golden_files(spec_path: Path, update_golden: bool) -> None:
    """examples/<spec>.yml -> the generated files beside it; regenerate: --update-golden."""
    expected = outputs(spec_path)
    if update_golden:
        for old in generated_tests_dir(spec_path).glob("*.test.yml"):
            old.unlink()
        for path, text in expected.items():
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path, text in expected.items():
        assert path.exists(), f"{path} missing: run pytest --update-golden"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} drifted from the generator: run pytest --update-golden and review"
        )
    extra = set(generated_tests_dir(spec_path).glob("*")) - set(expected)
    assert not extra, f"stale generated files: {sorted(extra)}"


def test_every_rule_file_in_the_repo_is_generated() -> None:
    """No hand-written rule files: every YAML with `groups:` is a golden output."""
    root = EXAMPLES.parent
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yml", "*.yaml"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    generated = {p for spec in spec_files() for p in outputs(spec)}
    for name in tracked:
        path = root / name
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        if text.startswith("groups:") or "\ngroups:" in text:
            assert path in generated, f"{name} looks like a hand-written rule file"
            assert text.startswith("# Code generated by msgtally")


@pytest.mark.parametrize("scrape", ["1s", "15s", "1m", "2m", "5m"])
def test_no_range_of_any_rule_is_shorter_than_four_scrape_intervals(scrape: str) -> None:
    """Burn windows, contract look-backs, the rules on msgtally itself: every one."""
    text = (EXAMPLES / "payments.yml").read_text().replace(
        "service: payments\n", f"service: payments\nscrape_interval: {scrape}\n"
    )
    spec = load_spec(text)
    least = 4 * spec.scrape_interval
    ranges = [
        _duration_seconds(d)
        for group in generate(spec)["groups"]
        for rule in group["rules"]
        for d in re.findall(r"\[(\w+)\]", rule["expr"])
    ]
    assert ranges and min(ranges) >= least


def _duration_seconds(text: str) -> int:
    units = {"d": DAY, "h": HOUR, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", text))
