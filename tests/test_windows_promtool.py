"""Windows a real Prometheus can evaluate: every period, scraped every 15 s and every 60 s.

For each SLO period docs/alerts.md offers and both scrape intervals, one SLO's
rules are generated and proven twice with `promtool test rules`:

- by the tests `msgtally alerts --tests` generates for them;
- by tests written here, by hand, from the table of effective windows
  (docs/alerts.md): the counters are scraped every interval, half an
  interval off the rule evaluations, one scrape in six missed (stale, as a
  failed scrape leaves every series); a burn of 20 times the budget from the
  first scrape pages within each page tier's short window plus two scrape
  intervals and stays paging at every evaluation up to the end; a burn of
  half the budget never pages.

The windows the period alone gave (no floor: `scrape_interval: 1s`) fail the
hand-written tests at 15 s: that is the bug this proves fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from msgtally.alerts.promtests import generate_tests
from msgtally.alerts.render import render_rules, render_tests
from msgtally.alerts.rules import generate
from msgtally.slis.spec.load import load_spec
from tests.test_promtool import run, tool

SPEC = """\
version: msgtally/v1
service: w
period: {period}
scrape_interval: {scrape}s
slos:
  - {{name: d, stream: orders, group: billing, sli: delivery, objective: 99}}
"""
# The page tiers of each period at each scrape interval: (burn_window, short window in
# seconds), from the table of effective windows, written out by hand.
PAGES: dict[tuple[str, int], list[tuple[str, int]]] = {
    ("30d", 15): [("1h", 300), ("6h", 1800)],
    ("30d", 60): [("1h", 300), ("6h", 1800)],
    ("28d", 15): [("1h", 300), ("6h", 1800)],
    ("28d", 60): [("1h", 300), ("6h", 1800)],
    ("7d", 15): [("15m", 60), ("1h", 300)],
    ("7d", 60): [("15m", 240), ("1h", 300)],
    ("1d", 15): [("2m", 60), ("12m", 60)],
    ("1d", 60): [("4m", 240), ("12m", 240)],
    ("12h", 15): [("1m", 60), ("6m", 60)],
    ("12h", 60): [("4m", 240), ("6m", 240)],
    ("1h", 15): [("1m", 60)],  # both page tiers raised to 1m: one page
    ("1h", 60): [("4m", 240)],
}
# The periods proven in the fast suite: the longest, and the two whose windows the
# floor raises; the others run with the slow tests.
FAST = {("30d", 15), ("12h", 60), ("1h", 15)}


def _cases() -> list[Any]:
    return [c if c in FAST else pytest.param(*c, marks=pytest.mark.slow) for c in PAGES]


EVENTS = 1000  # produced a scrape; the budget of a 99 % objective is 10 of them
MISS = 6  # one scrape in six missed
BURN = "MsgtallyErrorBudgetBurn"


def _values(per_scrape: int, scrapes: int) -> str:
    """A counter scraped `scrapes` times, half an interval off the evaluations (the
    series' interval is half the scrape interval: every other slot empty)."""
    return " ".join(
        "_ " + ("stale" if k % MISS == MISS - 1 else str(k * per_scrape)) for k in range(scrapes)
    )


def _seconds(s: int) -> str:
    return f"{s}s"


def hand_tests(period: str, scrape: int, rule_file: str) -> dict[str, Any]:
    pages = PAGES[period, scrape]
    deadlines = {window: short + 2 * scrape for window, short in pages}
    horizon = max(deadlines.values()) + 2 * MISS * scrape
    scrapes = horizon // scrape + 1

    def series(lost: int) -> list[dict[str, str]]:
        labels = '{stream="orders",group="billing"}'
        return [
            {"series": f"msgtally_messages_produced_total{labels}",
             "values": _values(EVENTS, scrapes)},
            {"series": f"msgtally_messages_lost_total{labels}", "values": _values(lost, scrapes)},
        ]  # fmt: skip

    def page(window: str) -> str:
        return (
            f'count(ALERTS{{alertname="{BURN}",alertstate="firing",severity="page",'
            f'burn_window="{window}"}})'
        )

    burning = {
        "name": "20x the budget pages in time and stays paging",
        "interval": f"{scrape * 500}ms",
        "input_series": series(20 * EVENTS // 100),
        "promql_expr_test": [
            test
            for window, due in deadlines.items()
            for test in (
                {"expr": page(window), "eval_time": _seconds(due),
                 "exp_samples": [{"labels": "{}", "value": 1}]},
                {"expr": f"count_over_time({page(window)}[{horizon - due}s:{scrape}s])",
                 "eval_time": _seconds(horizon),
                 "exp_samples": [{"labels": "{}", "value": (horizon - due) // scrape + 1}]},
            )
        ],
    }  # fmt: skip
    calm = {
        "name": "half the budget never pages",
        "interval": f"{scrape * 500}ms",
        "input_series": series(EVENTS // 200),
        "promql_expr_test": [
            {"expr": f'count_over_time(count(ALERTS{{alertname="{BURN}",severity="page"}})'
                     f"[{horizon}s:{scrape}s])",
             "eval_time": _seconds(horizon), "exp_samples": []},
        ],
    }  # fmt: skip
    return {
        "rule_files": [rule_file],
        "evaluation_interval": _seconds(scrape),
        "tests": [burning, calm],
    }


def _rules(tmp: Path, period: str, scrape: int) -> Path:
    spec = load_spec(SPEC.format(period=period, scrape=scrape))
    rules = tmp / "rules.yml"
    rules.write_text(render_rules(generate(spec), spec.service))
    return rules


@pytest.mark.parametrize(("period", "scrape"), _cases(), ids=lambda v: str(v))
def test_hand_written_burns(period: str, scrape: int, tmp_path: Path) -> None:
    _rules(tmp_path, period, scrape)
    (tmp_path / "hand.test.yml").write_text(
        yaml.safe_dump(hand_tests(period, scrape, "rules.yml"), sort_keys=False)
    )
    out = run(tool("promtool"), "test", "rules", "hand.test.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("period", "scrape"), _cases(), ids=lambda v: str(v))
def test_generated_tests_pass(period: str, scrape: int, tmp_path: Path) -> None:
    _rules(tmp_path, period, scrape)
    spec = load_spec(SPEC.format(period=period, scrape=scrape))
    (tmp_path / "t").mkdir()
    files = generate_tests(spec, "../rules.yml")
    assert f"{spec.service}.burn.test.yml" in files
    # What the period changes: the tiers, the burn and the quiet files (the rules on
    # msgtally itself depend on the scrape interval alone: test_promtool runs them).
    del files[f"{spec.service}.self.test.yml"]
    for name, data in files.items():
        (tmp_path / "t" / name).write_text(render_tests(data, spec.service))
    out = run(tool("promtool"), "test", "rules", *sorted(files), cwd=tmp_path / "t")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(files)


def test_the_windows_of_the_period_alone_fail_at_15s(tmp_path: Path) -> None:
    """12h scaled without a floor: a fast page over 1m and 5s, which a 15 s scrape never
    fills (the page never fires), and a slower one over 6m and 30s, which holds two
    samples, one after a missed scrape (the page flaps)."""
    _rules(tmp_path, "12h", 1)
    assert 'ratio_rate5s{service="w",slo="d"} > (14.4 * 0.01)' in (
        tmp_path / "rules.yml"
    ).read_text()
    (tmp_path / "hand.test.yml").write_text(
        yaml.safe_dump(hand_tests("12h", 15, "rules.yml"), sort_keys=False)
    )
    out = run(tool("promtool"), "test", "rules", "hand.test.yml", cwd=tmp_path)
    assert out.returncode != 0
    failed = out.stdout + out.stderr
    # never fires
    assert (
        'burn_window=\\"1m\\"})", time: 1m30s,\n        exp: {} 1E+00\n        got: nil' in failed
    )
    assert 'burn_window=\\"1m\\"})[180s:15s])", time: 4m30s,\n        exp: {} 1.3E+01\n' \
        "        got: nil" in failed
    # fires at 11 evaluations of 13
    assert 'burn_window=\\"6m\\"})[180s:15s])", time: 4m30s,\n        exp: {} 1.3E+01\n' \
        "        got: {} 1.1E+01" in failed
