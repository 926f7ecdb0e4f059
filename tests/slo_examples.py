"""The example SLO specs under examples/ and every file generated from them (golden files)."""

from __future__ import annotations

from pathlib import Path

from msgtally.alerts.alertmanager import render_alertmanager
from msgtally.alerts.promtests import generate_tests
from msgtally.alerts.render import render_rules, render_tests
from msgtally.alerts.rules import generate
from msgtally.slis.spec.load import read_spec_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GENERATED = (".rules.yml", ".alertmanager.yml")


def spec_files() -> list[Path]:
    """Every spec in examples/: the .yml files that are not generated output."""
    return sorted(
        p
        for p in EXAMPLES.glob("*.yml")
        if not p.name.endswith(GENERATED) and not p.name.endswith(".test.yml")
    )


def stem(spec: Path) -> str:
    return spec.name.removesuffix(".yml")


def outputs(spec_path: Path) -> dict[Path, str]:
    """Path -> text of every file generated from one example spec."""
    spec = read_spec_file(spec_path)
    base = EXAMPLES / stem(spec_path)
    rules = base.with_name(base.name + ".rules.yml")
    out = {
        rules: render_rules(generate(spec), spec.service),
        base.with_name(base.name + ".alertmanager.yml"): render_alertmanager(spec),
    }
    tests_dir = base.with_name(base.name + ".tests")
    for name, data in generate_tests(spec, f"../{rules.name}").items():
        out[tests_dir / name] = render_tests(data, spec.service)
    return out


def generated_tests_dir(spec_path: Path) -> Path:
    return EXAMPLES / (stem(spec_path) + ".tests")
