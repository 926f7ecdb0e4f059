"""`msgtally check`, `alerts` and `dashboards`: the SLO spec at the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from msgtally.names import DEFAULT_BUCKETS

from .errors import CommandError

# The collector's setting, read here without the collector's settings (its extra).
BUCKETS_ENV = "MSGTALLY_LATENCY_BUCKETS"

if TYPE_CHECKING:
    from msgtally.slis.spec.model import Spec


def parse_buckets(text: str) -> list[float]:
    """`0.1,0.5,2.5` -> [0.1, 0.5, 2.5] (seconds, strictly increasing)."""
    try:
        bounds = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of seconds"
        ) from None
    return _increasing(bounds, text)


def _increasing(bounds: list[float], text: str) -> list[float]:
    if not bounds or bounds != sorted(set(bounds)):
        raise argparse.ArgumentTypeError(f"{text!r}: bucket bounds must be strictly increasing")
    return bounds


def spec_buckets(args: argparse.Namespace) -> tuple[float, ...]:
    """The latency bounds a spec's thresholds must be among: --buckets, else
    MSGTALLY_LATENCY_BUCKETS (a JSON list, as the collector reads it), else the default."""
    if args.latency_buckets:
        return tuple(args.latency_buckets)
    raw = os.environ.get(BUCKETS_ENV)
    if raw is None:
        return DEFAULT_BUCKETS
    try:
        bounds = json.loads(raw)
        if not isinstance(bounds, list) or not all(
            type(b) in (int, float) for b in bounds
        ):
            raise ValueError
        return tuple(_increasing([float(b) for b in bounds], raw))
    except (ValueError, argparse.ArgumentTypeError):
        raise CommandError(
            f"{BUCKETS_ENV}={raw!r}: must be a JSON list of strictly increasing seconds, "
            "e.g. [0.1,0.5,2.5]",
            code=2,
        ) from None


def add_buckets(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    p.add_argument(
        flag,
        dest="latency_buckets",
        type=parse_buckets,
        metavar="S[,S...]",
        help=f"{what} (comma-separated seconds; default: MSGTALLY_LATENCY_BUCKETS or "
        "0.005,...,300)",
    )


def parse_scrape_interval(text: str) -> int:
    """`15s`, `1m`, `1m30s` -> seconds."""
    from msgtally.slis.spec.model import parse_interval

    try:
        return parse_interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("has value", "", 1).strip()) from None


def _nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def add_scrape_interval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scrape-interval",
        dest="scrape_interval",
        type=parse_scrape_interval,
        metavar="DURATION",
        help="how often Prometheus scrapes the collector (e.g. 15s, 1m): no alert window is "
        "shorter than four of them. Wins over the spec's scrape_interval (OpenSLO specs "
        "have none); default 1m, Prometheus's own",
    )


def load_spec_file(
    path: str, buckets: Sequence[float], scrape_interval: int | None = None
) -> Spec:
    """The spec, or every problem printed to stderr (one per line) and a CommandError."""
    from msgtally.slis.spec.load import read_spec_file
    from msgtally.slis.spec.yamldoc import SpecError

    try:
        return read_spec_file(path, buckets=buckets, scrape_interval=scrape_interval)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    except SpecError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        raise CommandError(f"{len(exc.problems)} problem(s) in {path}") from None


def _load(args: argparse.Namespace) -> Spec:
    return load_spec_file(args.spec, spec_buckets(args), getattr(args, "scrape_interval", None))


def _wrote(path: Path, what: str) -> None:
    print(f"wrote {path} ({what})", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    from msgtally.alerts.windows import format_duration

    spec = _load(args)
    print(
        f"{args.spec}: ok ({len(spec.slos)} SLOs, service {spec.service}, "
        f"period {spec.period.text}, scrape interval {format_duration(spec.scrape_interval)})"
    )
    if spec.slos:
        for line in tier_report(spec):
            print(line)
    for line in maintenance_report(spec):
        print(line)
    return 0


def maintenance_report(spec: Spec) -> list[str]:
    """Every maintenance window: when, what it mutes."""
    from msgtally.slis.spec.model import Weekly

    if not spec.maintenance:
        return []
    lines = ["maintenance windows (alerts muted, the figures go on):"]
    for w in spec.maintenance:
        if isinstance(w.when, Weekly):
            crosses = " (into the next day)" if w.when.minutes[1] > 1440 else ""
            when = (
                f"every {', '.join(w.when.days)}, {w.when.start} to {w.when.end}{crosses}, "
                f"{w.when.time_zone}"
            )
        else:
            when = f"{w.when.start.isoformat()} to {w.when.end.isoformat()}"
        scope = f"streams {', '.join(w.streams)}" if w.streams else "the whole service"
        loud = "contract breaches muted too" if w.mute_contracts else "contract breaches loud"
        lines.append(f"  {w.name}: {when}; {scope}; {loud}")
    return lines


def tier_report(spec: Spec) -> list[str]:
    """Every burn-rate tier's effective windows and factor, saying which were raised."""
    from msgtally.alerts.rules import num
    from msgtally.alerts.windows import floor, format_duration, spec_windows

    least = format_duration(floor(spec.scrape_interval))
    lines = [
        f"burn-rate tiers (no window shorter than {least}: four scrape intervals of "
        f"{format_duration(spec.scrape_interval)}):"
    ]
    for w in spec_windows(spec):

        def window(seconds: int, raised: bool, scaled: int) -> str:
            text = format_duration(seconds)
            return f"{text} (raised from {format_duration(scaled)})" if raised else text

        line = (
            f"  tier {w.tier}: {w.severity} at {num(w.factor)}x over "
            f"{window(w.long, w.long_raised, w.scaled_long)} and "
            f"{window(w.short, w.short_raised, w.scaled_short)}: "
            f"{num(round(w.share * 100, 2))}% of the budget spent in {w.long_text}"
        )
        if w.long_raised:
            line += " (the factor is the period's: a longer window needs more budget spent)"
        if w.merged:
            tiers = ", ".join(str(t) for t in w.merged)
            line += f"; tier {tiers} raised to the same windows, merged into this one"
        lines.append(line)
    return lines


def cmd_alerts(args: argparse.Namespace) -> int:
    from msgtally.alerts.alertmanager import render_alertmanager
    from msgtally.alerts.promtests import generate_tests
    from msgtally.alerts.render import render_rules, render_tests
    from msgtally.alerts.rules import generate

    if args.tests and not args.output:
        raise CommandError("--tests needs -o/--output (the tests load the rule file)", code=2)
    spec = _load(args)
    if args.collector_job:
        spec = dataclasses.replace(spec, collector_job=args.collector_job)
    rules = generate(spec)
    text = render_rules(rules, spec.service)
    try:
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            _wrote(Path(args.output), f"{len(rules['groups'])} rule groups")
        else:
            sys.stdout.write(text)
        if args.alertmanager:
            Path(args.alertmanager).write_text(render_alertmanager(spec), encoding="utf-8")
            _wrote(
                Path(args.alertmanager),
                "Alertmanager inhibit rules"
                + (", maintenance time intervals and routes" if spec.maintenance else ""),
            )
        if args.tests:
            directory = Path(args.tests)
            directory.mkdir(parents=True, exist_ok=True)
            rule_file = os.path.relpath(Path(args.output).resolve(), directory.resolve())
            tests = generate_tests(spec, rule_file)
            for name, data in tests.items():
                (directory / name).write_text(render_tests(data, spec.service), encoding="utf-8")
            _wrote(directory, f"{len(tests)} promtool test files")
    except BrokenPipeError:
        raise  # stdout closed early: msgtally.cli.main stops quietly
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    from msgtally.dashboards.build import generate
    from msgtally.dashboards.render import render_dashboard

    spec = _load(args)
    directory = Path(args.output)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in generate(spec).items():
            path = directory / f"{name}.json"
            path.write_text(render_dashboard(data), encoding="utf-8")
            _wrote(path, f"{data['title']}, {len(data['panels'])} panels")
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `check`, `alerts` and `dashboards` to the `msgtally` command."""
    p = sub.add_parser(
        "check",
        help="validate an SLO spec",
        description="Validate an SLO spec (msgtally/v1 or OpenSLO) and print every problem "
        "with its line, SLO and field. Exit code 1 on any problem. A valid spec prints every "
        "burn-rate tier's effective windows and factor, saying which windows the scrape "
        "interval raised.",
    )
    p.add_argument("spec", metavar="SPEC", help="the SLO spec (YAML)")
    add_buckets(p, "--buckets", "the collector's latency histogram bounds, for latency thresholds")
    add_scrape_interval(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "alerts",
        help="generate Prometheus recording and burn-rate alert rules from an SLO spec",
        description="Generate one Prometheus rule file from an SLO spec: error-ratio "
        "recording rules per window, SLO metadata, multi-window multi-burn-rate alerts "
        "(MsgtallyErrorBudgetBurn) and MsgtallySLIAbsent, contract breaches, and the rules "
        "that watch msgtally itself (collector down, engine stalled, backlog, quarantined "
        "rows, measurement loss).",
    )
    p.add_argument("spec", metavar="SPEC", help="the SLO spec (YAML)")
    p.add_argument("-o", "--output", metavar="FILE", help="rule file to write (default: stdout)")
    p.add_argument(
        "--alertmanager",
        metavar="FILE",
        help="also write an Alertmanager config whose inhibit rule lets a page silence the "
        "ticket of the same SLO",
    )
    p.add_argument(
        "--tests",
        metavar="DIR",
        help="also write `promtool test rules` files proving every alert tier (needs -o)",
    )
    add_buckets(p, "--buckets", "the collector's latency histogram bounds, for latency thresholds")
    add_scrape_interval(p)
    p.add_argument(
        "--collector-job",
        metavar="JOB",
        type=_nonempty,
        help="the Prometheus job that scrapes the collector, watched by the rules on msgtally "
        "itself (up, engine, backlog, measurement loss). Wins over the spec's collector_job; "
        "default msgtally",
    )
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser(
        "dashboards",
        help="generate Grafana dashboards (executive, on-call, debug) from an SLO spec",
        description="Generate three Grafana dashboards (JSON, schemaVersion 42) from an SLO "
        "spec: executive.json, oncall.json and debug.json, with a Prometheus data source "
        "variable, stream and group variables and links between them. SLO panels read the "
        "recording rules of `msgtally alerts`: load those rules in the same Prometheus.",
    )
    p.add_argument("spec", metavar="SPEC", help="the SLO spec (YAML)")
    p.add_argument(
        "-o", "--output", metavar="DIR", required=True, help="directory to write the JSON files to"
    )
    add_buckets(p, "--buckets", "the collector's latency histogram bounds, for latency thresholds")
    add_scrape_interval(p)
    p.set_defaults(func=cmd_dashboards)
