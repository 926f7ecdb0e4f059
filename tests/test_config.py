"""The config file: flags win over MSGTALLY_* variables, which win over the
file, which wins over the defaults; a bad file is refused naming the file, the
key and the reason."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from msgtally.cli import build_parser, main
from msgtally.settings import SettingsError, settings_from_args

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "deploy" / "msgtally.yml"


def _settings(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_flags_then_environment_then_file_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "msgtally.yml"
    config.write_text(
        "max_series: 20000\nmax-body: 2048\nsettle: 3\n"
        "stream_deadlines: {orders: 60}\nexpected_groups: {orders: [billing, shipping]}\n"
    )
    monkeypatch.delenv("MSGTALLY_CONFIG", raising=False)
    monkeypatch.setenv("MSGTALLY_SETTLE", "4")
    got = settings_from_args(_settings(["--config", str(config), "--max-series", "30000"]))
    assert got.max_series == 30000  # the flag
    assert got.settle == 4  # the environment
    assert got.max_body == 2048  # the file, key written with a dash
    assert got.stream_deadlines == {"orders": 60}
    assert got.expected_groups == {"orders": ["billing", "shipping"]}
    assert got.deadline == 300  # the default
    monkeypatch.setenv("MSGTALLY_CONFIG", str(config))
    assert settings_from_args(_settings([])).max_series == 20000  # the file, from the variable


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("max_seriez: 3\n", "unknown setting 'max_seriez'"),
        ("- a\n- b\n", "must be a mapping of settings, got YAML list"),
        ("port: [\n", "not YAML"),
        ("max_series: 0\n", ": max_series: input should be greater than or equal to 1"),
        ("max_series: many\n", ": max_series: input should be a valid integer"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, says: str
) -> None:
    monkeypatch.delenv("MSGTALLY_MAX_SERIES", raising=False)
    config = tmp_path / "bad.yml"
    config.write_text(text)
    with pytest.raises(SettingsError) as info:
        settings_from_args(_settings(["--config", str(config)]))
    assert f"config file {config}" in str(info.value)
    assert says in str(info.value)


def test_a_missing_file_is_an_error_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", str(tmp_path / "nope.yml")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_the_shipped_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MSGTALLY_DB", "MSGTALLY_HOST", "MSGTALLY_TOKEN_FILE", "MSGTALLY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    got = settings_from_args(_settings(["--config", str(EXAMPLE)]))
    assert got.db.startswith("sqlite:////var/lib/msgtally/")
    assert got.host == "0.0.0.0"
