"""The SLO spec: loading, every problem with its place, OpenSLO, `msgtally check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from msgtally.names import SLIKind
from msgtally.slis.spec.load import check_spec, load_spec
from msgtally.slis.spec.model import SLO, Alerting, Contract, Notify, Period
from msgtally.slis.spec.semantics import Semantics
from msgtally.slis.spec.yamldoc import Problem, SpecError
from tests.slo_examples import EXAMPLES

VALID = """\
version: msgtally/v1
service: checkout
period: 30d
labels: {team: payments}
slos:
  - name: orders-delivery      # unique; becomes the `slo` label
    stream: orders
    group: billing
    sli: delivery
    objective: 99.9
  - name: orders-latency
    stream: orders
    group: billing
    sli: latency
    threshold: 2.5
    objective: 99
    alerting:
      page: {labels: {route: pager}, annotations: {summary: "..."}}
      ticket: {labels: {route: slack}}
      runbook: https://runbooks.example/orders
"""


def test_the_issue_example_loads() -> None:
    spec = load_spec(VALID)
    assert spec.service == "checkout"
    assert spec.period == Period(30 * 86_400, "30d")
    assert spec.labels == {"team": "payments"}
    assert spec.slos[0] == SLO(
        name="orders-delivery", stream="orders", group="billing", sli=SLIKind.DELIVERY,
        objective=99.9,
    )  # fmt: skip
    assert spec.slos[1].threshold == 2.5
    assert spec.slos[1].alerting == Alerting(
        page=Notify(labels={"route": "pager"}, annotations={"summary": "..."}),
        ticket=Notify(labels={"route": "slack"}),
        runbook="https://runbooks.example/orders",
    )


def test_defaults() -> None:
    spec = load_spec(
        "version: msgtally/v1\nservice: s\nslos:\n"
        "  - {name: a, stream: o, sli: retries, objective: 95}\n"
    )
    assert spec.period.text == "30d"
    assert spec.slos[0].group is None
    assert spec.slos[0].group_label == "*"
    assert spec.slos[0].alerting == Alerting()


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 2_592_000), ("28d", 2_419_200), ("7d", 604_800), ("12h", 43_200),
                          ("1h", 3_600), ("90d", 7_776_000)]
)  # fmt: skip
def test_periods(text: str, seconds: int) -> None:
    assert Period.parse(text).seconds == seconds


@pytest.mark.parametrize("text", ["30", "0d", "1.5d", "30m", "1w", "d", "-1d", "30 d"])
def test_bad_periods(text: str) -> None:
    with pytest.raises(ValueError, match="whole number of days or hours"):
        Period.parse(text)


BAD = """\
version: msgtally/v2
service: checkout
period: 30m
labels: {team: payments, slo: x, 9bad: y}
slos:
  - name: a
    stream: orders
    sli: delivery
    objective: 100
  - name: b
    stream: orders
    sli: latency
    threshold: 2.4
    objective: 99
  - name: a
    stream: orders
    sli: retries
    threshold: 1
    objective: 99
    colour: blue
  - name: c
    sli: speed
    objective: "high"
    alerting:
      page: {labels: {severity: x}}
      disable: "yes"
"""


def test_every_problem_with_line_slo_and_field() -> None:
    got = {(p.line, p.slo, p.field) for p in check_spec(BAD)}
    assert got == {
        (1, None, "version"),
        (3, None, "period"),
        (4, None, "labels.slo"),
        (4, None, "labels.9bad"),
        (9, "a", "slos[0].objective"),
        (13, "b", "slos[1].threshold"),
        (18, "a", "slos[2].threshold"),
        (20, "a", "slos[2].colour"),
        (15, "a", "slos[2].name"),
        (21, "c", "slos[3]"),  # missing stream
        (22, "c", "slos[3].sli"),
        (23, "c", "slos[3].objective"),
        (25, "c", "slos[3].alerting.page.labels.severity"),
        (26, "c", "slos[3].alerting.disable"),
    }


def test_problem_messages_say_what_is_wrong() -> None:
    by_field = {p.field: p.message for p in check_spec(BAD)}
    assert "Must be 'msgtally/v1'" in by_field["version"]
    assert "is not a percentage above 0 and below 100" in by_field["slos[0].objective"]
    assert by_field["slos[1].threshold"].startswith(
        "2.4 s is not a bucket bound of the collector's latency histogram (bounds: 0.005, 0.01,"
    )
    assert "2.5, 5.0" in by_field["slos[1].threshold"]
    assert by_field["slos[2].threshold"] == "only for sli latency, not retries"
    assert "used twice" in by_field["slos[2].name"]
    assert by_field["slos[2].colour"].startswith("unknown field (known: alerting, description,")
    assert "delivery, duplicates, latency, retries" in by_field["slos[3].sli"]
    assert "reserved" in by_field["labels.slo"]
    assert (
        str(Problem(13, "slos[1].threshold", "x", "b")) == "line 13: slo 'b': slos[1].threshold: x"
    )


def test_threshold_valid_with_the_collectors_own_buckets() -> None:
    text = VALID.replace("threshold: 2.5", "threshold: 2.4")
    assert [p.field for p in check_spec(text)] == ["slos[1].threshold"]
    assert check_spec(text, buckets=(0.5, 2.4, 10.0)) == []


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("", "(document)", 1),
        ("version: msgtally/v1\nservice: [unclosed\n", "(yaml)", 3),
        ("- a\n- b\n", "(document)", 1),
        ("version: msgtally/v1\nservice: s\nservice: t\nslos: []\n", "service", 3),
        ("version: msgtally/v1\nservice: s\nslos: []\n", "slos", 3),
        ("version: msgtally/v1\nservice: s\nslos: [{}]\n---\nx: 1\n", "(document)", 5),
    ],
)
def test_malformed_files(text: str, field: str, line: int) -> None:
    problems = check_spec(text)
    assert problems, text
    assert (problems[0].field, problems[0].line) == (field, line)


def test_spec_error_lists_every_problem() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(BAD, source="bad.yml")
    assert len(info.value.problems) == 14
    assert "bad.yml: line 13: slo 'b': slos[1].threshold:" in str(info.value)


def test_openslo_equivalent_of_native() -> None:
    native = (EXAMPLES / "inventory-28d.yml").read_text()
    openslo = (EXAMPLES / "inventory-28d.openslo.yml").read_text()
    assert load_spec(openslo) == load_spec(native)


OPENSLO_BAD = """\
apiVersion: openslo/v1
kind: SLO
metadata: {name: x}
spec:
  service: s
  budgetingMethod: Timeslices
  timeWindow: [{duration: 1M, isRolling: false}]
  indicator:
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {type: Prometheus, spec: {query: 'up{job="x"}'}}}
        total: {metricSource: {type: Prometheus, spec: {query: 'up'}}}
  objectives: [{target: 99.9}]
---
apiVersion: openslo/v1
kind: AlertPolicy
"""


def test_openslo_problems() -> None:
    got = {(p.line, p.field) for p in check_spec(OPENSLO_BAD)}
    assert got == {
        (6, "spec.budgetingMethod"),
        (7, "spec.timeWindow[0]"),
        (7, "spec.timeWindow[0].duration"),
        (10, "spec.indicator.spec.ratioMetric"),
        (14, "spec.objectives[0].target"),
        (17, "kind"),  # the second document
    }


CLI = [sys.executable, "-m", "msgtally.cli"]


def test_check_command(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(VALID)
    bad.write_text(BAD)
    ok = subprocess.run([*CLI, "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok (2 SLOs, service checkout, period 30d, scrape interval 1m)" in ok.stdout
    out = subprocess.run([*CLI, "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stdout == ""  # every problem goes to stderr, as for `alerts` and `dashboards`
    *problems, summary = out.stderr.splitlines()
    assert len(problems) == 14
    assert summary.endswith(f"14 problem(s) in {bad}")
    assert f"{bad}: line 13: slo 'b': slos[1].threshold: 2.4 s is not a bucket bound" in out.stderr
    custom = subprocess.run(
        [*CLI, "check", str(good), "--buckets", "1,2"], capture_output=True, text=True
    )
    assert custom.returncode == 1
    assert "(bounds: 1.0, 2.0)" in custom.stderr
    # the collector's own setting, as `msgtally serve` reads it
    env = {**os.environ, "MSGTALLY_LATENCY_BUCKETS": "[1, 2.4]"}
    from_env = subprocess.run([*CLI, "check", str(bad)], capture_output=True, text=True, env=env)
    assert "line 13: slo 'b': slos[1].threshold" not in from_env.stderr  # 2.4 s is a bound
    from_env = subprocess.run([*CLI, "check", str(good)], capture_output=True, text=True, env=env)
    assert "2.5 s is not a bucket bound" in from_env.stderr
    assert "(bounds: 1.0, 2.4)" in from_env.stderr
    env["MSGTALLY_LATENCY_BUCKETS"] = "[2, 1]"
    refused = subprocess.run([*CLI, "check", str(good)], capture_output=True, text=True, env=env)
    assert refused.returncode == 2
    assert "MSGTALLY_LATENCY_BUCKETS='[2, 1]': must be a JSON list" in refused.stderr
    missing = subprocess.run([*CLI, "check", str(tmp_path / "no.yml")], capture_output=True)
    assert missing.returncode == 1


def test_slo_commands_have_help() -> None:
    for name in ("check", "alerts", "dashboards"):
        out = subprocess.run([*CLI, name, "--help"], capture_output=True, text=True, check=True)
        assert f"usage: msgtally {name}" in out.stdout
        assert "--buckets" in out.stdout
        assert "--scrape-interval" in out.stdout
    for name in ("serve", "reconcile"):
        out = subprocess.run([*CLI, name, "--help"], capture_output=True, text=True, check=True)
        assert "--latency-buckets" in out.stdout


def test_latency_buckets_flag_reaches_the_settings() -> None:
    from msgtally.cli import build_parser
    from msgtally.settings import settings_from_args

    args = build_parser().parse_args(["serve", "--latency-buckets", "0.5,2.4,10"])
    assert settings_from_args(args).reconcile_config().latency_buckets == (0.5, 2.4, 10.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--latency-buckets", "2,1"])


def test_group_star_is_reserved() -> None:
    text = VALID.replace(
        "    group: billing\n    sli: delivery", '    group: "*"\n    sli: delivery'
    )
    assert [(p.line, p.field) for p in check_spec(text)] == [(8, "slos[0].group")]


CONTRACTS = """\
version: msgtally/v1
service: payments
slos:
  - {name: d, stream: payments, sli: delivery, objective: 99.9}
  - {name: l, stream: ledger, sli: delivery, objective: 99}
contracts:
  - stream: payments
    semantics: exactly-once
  - stream: ledger
    semantics: at-least-once
  - stream: ledger
    group: notifier
    semantics: at-most-once
"""


def test_contracts_load_and_the_most_specific_applies() -> None:
    spec = load_spec(CONTRACTS)
    assert spec.contracts == (
        Contract("payments", Semantics.EXACTLY_ONCE),
        Contract("ledger", Semantics.AT_LEAST_ONCE),
        Contract("ledger", Semantics.AT_MOST_ONCE, group="notifier"),
    )
    assert spec.contract_for("payments", "billing") == spec.contracts[0]
    assert spec.contract_for("ledger", "archive") == spec.contracts[1]
    assert spec.contract_for("ledger", "notifier") == spec.contracts[2]
    assert spec.contract_for("clicks", "any") is None
    assert spec.own_groups("ledger") == ("notifier",)


def test_a_spec_of_contracts_alone_is_valid() -> None:
    spec = load_spec(
        "version: msgtally/v1\nservice: s\ncontracts:\n"
        "  - {stream: orders, semantics: at-least-once}\n"
    )
    assert (spec.slos, spec.contracts) == ((), (Contract("orders", Semantics.AT_LEAST_ONCE),))
    assert check_spec("version: msgtally/v1\nservice: s\n")[0].message == (
        "needs 'slos', 'contracts' or both"
    )


BAD_CONTRACTS = """\
version: msgtally/v1
service: payments
slos:
  - {name: d, stream: payments, sli: delivery, objective: 99.9}
contracts:
  - stream: payments
    semantics: exactly-once
  - stream: paymnets
    semantics: at-least-once
  - stream: payments
    semantics: exactly-once
  - stream: payments
    group: "*"
    semantics: at-most-once
  - stream: payments
    semantics: once
    colour: red
  - semantics: at-most-once
"""


def test_every_contract_problem_with_line_and_field() -> None:
    got = {(p.line, p.field): p.message for p in check_spec(BAD_CONTRACTS)}
    assert got == {
        (8, "contracts[1].stream"): "stream 'paymnets' is not measured by any SLO of this "
        "spec (streams: payments)",
        (10, "contracts[2]"): "stream 'payments', every group: a second contract (the first "
        "is at line 6); one contract per stream and group",
        (13, "contracts[3].group"): "'*' stands for every group: omit the field",
        (16, "contracts[4].semantics"): "has value 'once'. Must be one of: at-most-once, "
        "at-least-once, exactly-once.",
        (17, "contracts[4].colour"): "unknown field (known: group, semantics, stream)",
        (18, "contracts[5]"): "missing required field 'stream'",
    }


SCRAPE = """\
version: msgtally/v1
service: s
period: {period}
scrape_interval: {scrape}
slos:
  - {{name: d, stream: orders, sli: delivery, objective: 99.9}}
"""


@pytest.mark.parametrize(
    ("scrape", "seconds"), [("15s", 15), ("30s", 30), ("1m", 60), ("1m30s", 90), ("1s", 1)]
)
def test_scrape_interval(scrape: str, seconds: int) -> None:
    assert load_spec(SCRAPE.format(period="1d", scrape=scrape)).scrape_interval == seconds


def test_scrape_interval_defaults_to_prometheus_own() -> None:
    assert load_spec(VALID).scrape_interval == 60
    # the command line's wins over the spec's
    text = SCRAPE.format(period="1d", scrape="15s")
    assert load_spec(text, scrape_interval=30).scrape_interval == 30


@pytest.mark.parametrize("scrape", ["15", "0s", "1.5s", "500ms", "1d", "fast", '""', "-15s"])
def test_bad_scrape_intervals(scrape: str) -> None:
    (problem,) = check_spec(SCRAPE.format(period="1d", scrape=scrape))
    assert (problem.line, problem.field) == (4, "scrape_interval")
    assert "Must be a duration of whole seconds, at least 1s" in problem.message


def test_a_scrape_interval_too_long_for_the_period() -> None:
    (problem,) = check_spec(SCRAPE.format(period="1h", scrape="2m"))
    assert (problem.line, problem.field) == (4, "scrape_interval")
    assert problem.message == (
        "2m is too long for a 1h period: no window is shorter than 4 scrape intervals, and "
        "10 such windows must fit in the period (at most 1m30s for 1h)"
    )
    assert check_spec(SCRAPE.format(period="1h", scrape="90s")) == []
    text = SCRAPE.format(period="1h", scrape="15s")
    (flag,) = check_spec(text, scrape_interval=600)
    assert (flag.line, flag.field) == (None, "--scrape-interval")


def test_openslo_takes_the_scrape_interval_from_the_command_line() -> None:
    text = (EXAMPLES / "inventory-28d.openslo.yml").read_text()
    assert load_spec(text).scrape_interval == 60
    assert load_spec(text, scrape_interval=15).scrape_interval == 15


def test_check_prints_every_tier_and_what_was_raised(tmp_path: Path) -> None:
    spec = tmp_path / "slo.yml"
    spec.write_text(SCRAPE.format(period="1d", scrape="1m"))
    out = subprocess.run([*CLI, "check", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == [
        "burn-rate tiers (no window shorter than 4m: four scrape intervals of 1m):",
        "  tier 1: page at 14.4x over 4m (raised from 2m) and 4m (raised from 10s): 4% of the "
        "budget spent in 4m (the factor is the period's: a longer window needs more budget "
        "spent)",
        "  tier 2: page at 6x over 12m and 4m (raised from 1m): 5% of the budget spent in 12m",
        "  tier 3: ticket at 3.2x over 45m and 4m: 10% of the budget spent in 45m",
        "  tier 4: ticket at 1.2x over 2h and 10m: 10% of the budget spent in 2h",
    ]
    flag = subprocess.run(
        [*CLI, "check", str(spec), "--scrape-interval", "15s"], capture_output=True, text=True
    )
    assert "scrape interval 15s)" in flag.stdout
    assert "  tier 1: page at 14.4x over 2m and 1m (raised from 10s): 2% of the budget" in (
        flag.stdout
    )
    hour = tmp_path / "hour.yml"
    hour.write_text(SCRAPE.format(period="1h", scrape="15s"))
    out = subprocess.run([*CLI, "check", str(hour)], capture_output=True, text=True)
    assert "; tier 1 raised to the same windows, merged into this one" in out.stdout
    bad = subprocess.run(
        [*CLI, "check", str(hour), "--scrape-interval", "15"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "argument --scrape-interval: '15'. Must be a duration" in bad.stderr
