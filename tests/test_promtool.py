"""Proof with Prometheus's own tools: promtool check/test rules, amtool check-config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from msgtally.slis.spec.load import read_spec_file
from tests.conftest import service_unavailable
from tests.slo_examples import EXAMPLES, generated_tests_dir, spec_files, stem


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        service_unavailable(f"{name} not installed (Debian: prometheus, prometheus-alertmanager)")
    assert path is not None
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("spec", spec_files(), ids=stem)
def test_promtool_check_rules(spec: Path) -> None:
    rules = EXAMPLES / f"{stem(spec)}.rules.yml"
    out = run(tool("promtool"), "check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def distinct_rules() -> list[Path]:
    """Specs whose rules differ (the OpenSLO twin's are the same file, see the golden test)."""
    seen: dict[str, Path] = {}
    for spec in spec_files():
        seen.setdefault((EXAMPLES / f"{stem(spec)}.rules.yml").read_text(), spec)
    return sorted(seen.values())


@pytest.mark.parametrize("spec", distinct_rules(), ids=stem)
def test_every_spec_has_its_test_files(spec: Path) -> None:
    files = sorted(p.name for p in generated_tests_dir(spec).glob("*.test.yml"))
    # four tiers, the burn, quiet and self files, and the contracts file where the spec has
    # contracts
    assert len(files) == 7 + bool(read_spec_file(spec).contracts)


# The example whose generated tests run in the fast suite (every kind of file:
# tiers, burn, quiet, self, contracts); the other examples' run with the slow tests.
FAST_EXAMPLE = "payments"


def generated_files() -> list[Any]:
    """Every generated test file of the specs whose rules differ, one test each (they
    spread over the workers)."""
    return [
        p if p.name.startswith(f"{FAST_EXAMPLE}.") else pytest.param(p, marks=pytest.mark.slow)
        for spec in distinct_rules()
        for p in sorted(generated_tests_dir(spec).glob("*"))
    ]


@pytest.mark.parametrize("test_file", generated_files(), ids=lambda p: p.name)
def test_promtool_test_rules(test_file: Path) -> None:
    out = run(tool("promtool"), "test", "rules", test_file.name, cwd=test_file.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == 1


@pytest.mark.parametrize("spec", spec_files(), ids=stem)
def test_amtool_check_config(spec: Path) -> None:
    config = EXAMPLES / f"{stem(spec)}.alertmanager.yml"
    out = run(tool("amtool"), "check-config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 inhibit rules" in out.stdout


@pytest.mark.parametrize(
    ("change", "test_file"),
    [
        # A page factor off by one: the page-1h tests notice.
        (("(14.4 * 0.001)", "(15.4 * 0.001)"), "checkout.page-1h.test.yml"),
        # A ticket factor: the ticket-3d tests notice.
        (("(1 * 0.001)", "(0.9 * 0.001)"), "checkout.ticket-3d.test.yml"),
        # No guard on the denominator: zero traffic gives NaN, the quiet test notices.
        ((" > 0)", ")"), "checkout.quiet.test.yml"),
        # A contract that lets one breach through: the contract tests notice.
        (("offset 5m)) > 0\n", "offset 5m)) > 1\n"), "payments.contracts.test.yml"),
        # A contract page that does not ride out a missed scrape: resolved while it breaches.
        (("    keep_firing_for: 2m\n    labels:\n      severity: page\n      service: payments\n"
          "      stream: payments\n", "    labels:\n      severity: page\n"
          "      service: payments\n      stream: payments\n"), "payments.contracts.test.yml"),
        # The sample 5 minutes ago, not the last one before the window: a missed scrape
        # then looks like a young series and pages again.
        (("(max_over_time(msgtally_messages_lost_total{stream=\"payments\"}[5m] offset 5m))",
          "(msgtally_messages_lost_total{stream=\"payments\"} offset 5m)"),
         "payments.contracts.test.yml"),
        # A collector down that pages at once: one failed scrape pages.
        (("    for: 5m\n", ""), "payments.self.test.yml"),
        # A stall read from the gauge as it is now: a missed scrape restarts the `for`.
        (('max(max_over_time(msgtally_reconcile_backlog_records{job="msgtally"}[4m])) > 0',
          'max(msgtally_reconcile_backlog_records{job="msgtally"}) > 0'),
         "payments.self.test.yml"),
        # Measurement loss blind to series younger than its window.
        (("\n        or\n        max by (stream, group, kind) (min_over_time(msgtally_records_"
          "dropped_total", "\n        and\n        max by (stream, group, kind) (min_over_time("
          "msgtally_records_dropped_total"), "payments.self.test.yml"),
        # A window of one scrape interval (1m, the default): it never holds two samples,
        # the fast page never fires, and the burn tests notice.
        (("[5m]))", "[1m]))"), "checkout.burn.test.yml"),
        # A contract blind to series younger than its window: the young-series tests notice.
        (("\n      or\n", "\n      and\n"), "payments.contracts.test.yml"),
        # A stream-wide contract that forgets a group's own: its allowed loss would page.
        ((',group!="notifier"', ""), "payments.contracts.test.yml"),
    ],
)
@pytest.mark.slow  # a dozen promtool runs: the generated tests' own proof, with the slow tests
def test_generated_tests_catch_a_broken_rule(
    change: tuple[str, str], test_file: str, tmp_path: Path
) -> None:
    """The promtool tests are a proof only if they fail on wrong rules."""
    name = test_file.split(".")[0]
    rules = (EXAMPLES / f"{name}.rules.yml").read_text()
    assert change[0] in rules
    (tmp_path / f"{name}.rules.yml").write_text(rules.replace(change[0], change[1]))
    (tmp_path / "t").mkdir()
    test = (EXAMPLES / f"{name}.tests" / test_file).read_text()
    (tmp_path / "t" / test_file).write_text(test)
    out = run(tool("promtool"), "test", "rules", test_file, cwd=tmp_path / "t")
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr


SPEC = """\
version: msgtally/v1
service: cli
period: 12h
labels: {team: t}
slos:
  - {name: d, stream: orders, group: billing, sli: delivery, objective: 99}
  - {name: l, stream: orders, sli: latency, threshold: 2.4, objective: 90,
     alerting: {ticket: {disable: true}}}
"""


def test_alerts_command_outputs_pass_the_tools(tmp_path: Path) -> None:
    (tmp_path / "slo.yml").write_text(SPEC)
    cli = [sys.executable, "-m", "msgtally.cli", "alerts", "slo.yml"]
    bad = run(*cli, "-o", "out/rules.yml", cwd=tmp_path)
    assert bad.returncode == 1
    assert "2.4 s is not a bucket bound" in bad.stderr
    args = ["-o", "rules.yml", "--alertmanager", "am.yml", "--tests", "tests", "--buckets",
            "0.5,2.4,10"]  # fmt: skip
    out = run(*cli, *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rules.yml").read_text().startswith("# Code generated by msgtally")
    assert run(tool("promtool"), "check", "rules", "rules.yml", cwd=tmp_path).returncode == 0
    files = sorted(p.name for p in (tmp_path / "tests").glob("*.test.yml"))
    # A 12h period at the default 1m scrape interval: windows of 4m at least.
    assert files == [
        "cli.burn.test.yml", "cli.page-4m.test.yml", "cli.page-6m.test.yml",
        "cli.quiet.test.yml", "cli.self.test.yml", "cli.ticket-1h.test.yml",
        "cli.ticket-20m.test.yml",
    ]  # fmt: skip
    tested = run(tool("promtool"), "test", "rules", *files, cwd=tmp_path / "tests")
    assert tested.returncode == 0, tested.stdout
    assert run(tool("amtool"), "check-config", "am.yml", cwd=tmp_path).returncode == 0
    stdout = run(*cli, "--buckets", "0.5,2.4,10", cwd=tmp_path)
    assert stdout.stdout == (tmp_path / "rules.yml").read_text()
    needs_output = run(*cli, "--buckets", "2.4", "--tests", "x", cwd=tmp_path)
    assert needs_output.returncode == 2
    job = run(*cli, "--buckets", "0.5,2.4,10", "--collector-job", "msgtally-prod", cwd=tmp_path)
    assert 'up{job="msgtally-prod"} == 0' in job.stdout
    assert 'job="msgtally"' not in job.stdout
