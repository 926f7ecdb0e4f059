"""The collector's settings: one object, validated at start-up.

From, the first that says: the command-line flags, MSGTALLY_* environment
variables, a YAML config file (`--config FILE` or MSGTALLY_CONFIG, keys as the
settings' names: `max_series: 20000`), the defaults.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from msgtally.ingest.intake.limits import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_SERIES,
    DEFAULT_READ_TIMEOUT,
    MAX_SERIES,
)
from msgtally.names import DEFAULT_BUCKETS
from msgtally.reconcile.config import (
    DEFAULT_BUDGET,
    DEFAULT_DEADLINE,
    DEFAULT_REMEMBER,
    DEFAULT_SETTLE,
    ReconcileConfig,
)
from msgtally.reconcile.history import DEFAULT_RETAIN, DEFAULT_RETAIN_VERDICTS, Retention
from msgtally.slis.spec.model import parse_duration
from msgtally.store.url import DEFAULT_DB_URL

from .auth import TokenError, TokenFile, Tokens
from .logs import LogFormat, LogLevel


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MSGTALLY_", extra="forbid")

    db: str = DEFAULT_DB_URL
    host: str = "127.0.0.1"
    port: int = Field(default=8410, ge=0, le=65535)
    otlp_grpc: bool = True
    otlp_grpc_port: int = Field(default=4317, ge=0, le=65535)
    max_body: int = Field(default=DEFAULT_MAX_BODY, ge=1024)
    max_inflight: int = Field(default=DEFAULT_MAX_INFLIGHT, ge=1024)
    read_timeout: float = Field(default=DEFAULT_READ_TIMEOUT, gt=0)
    max_series: int = Field(default=DEFAULT_MAX_SERIES, ge=1, le=MAX_SERIES)
    token: str | None = None  # MSGTALLY_TOKEN; --token-file reads tokens from a file
    token_file: str | None = None
    spec: str | None = None  # an SLO spec whose delivery contracts the SLIs show
    metrics_open: bool = False
    ui_open: bool = False  # with a token, leave the status page open
    prometheus_url: str | None = None  # the status page shows the alerts' state from it
    grafana_url: str | None = None  # ... links to the dashboards there
    trace_url: str | None = None  # ... links each id to its trace: a template with {trace_id}
    reconcile: bool = True
    interval: float = Field(default=0.5, gt=0)
    deadline: float = Field(default=DEFAULT_DEADLINE, gt=0)
    settle: float = Field(default=DEFAULT_SETTLE, ge=0)
    remember: float = Field(default=DEFAULT_REMEMBER, ge=0)
    stream_deadlines: dict[str, float] = Field(default_factory=dict)
    expected_groups: dict[str, list[str]] = Field(default_factory=dict)
    latency_buckets: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS))
    budget: int = Field(default=DEFAULT_BUDGET, ge=1)
    # Seconds the log and the per-minute figures are kept (--retain: 7d, 12h, or seconds).
    retain: float = Field(default=DEFAULT_RETAIN, gt=0)
    # Seconds the verdict rows of discrepant ids are kept past their deadline.
    retain_verdicts: float = Field(default=DEFAULT_RETAIN_VERDICTS, gt=0)
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    access_log: bool = False

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("retain", "retain_verdicts", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("stream_deadlines")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for stream, seconds in value.items():
            if seconds <= 0:
                raise ValueError(f"deadline of stream {stream!r} is {seconds}; must be > 0")
        return value

    def token_file_source(self) -> TokenFile | None:
        """The token file, read (`--token-file`); None without one."""
        if self.token_file is None:
            return None
        try:
            return TokenFile(self.token_file)
        except TokenError as exc:
            raise SettingsError(f"--token-file: {exc}") from None

    def collector_options(self, token_file: TokenFile | None = None) -> dict[str, Any]:
        """What msgtally.app.create_app takes from the settings (the tokens
        of `token_file` when given, which its watcher keeps current)."""
        tokens = token_file.tokens if token_file is not None else None
        if tokens is None and self.token_file is None and self.token:
            tokens = Tokens([self.token])
        return {
            "max_body": self.max_body,
            "max_inflight": self.max_inflight,
            "read_timeout": self.read_timeout,
            "max_series": self.max_series,
            "token": tokens,
            "metrics_open": self.metrics_open,
            "ui_open": self.ui_open,
            "reconcile_interval": self.interval if self.reconcile else None,
            "otlp_grpc": (self.host, self.otlp_grpc_port) if self.otlp_grpc else None,
        }

    def retention(self, longest_period: float | None) -> Retention:
        """How long the log and the per-minute rows (--retain), the per-hour rows and
        the verdict rows (--retain-verdicts) are kept."""
        return Retention.for_period(self.retain, longest_period, self.retain_verdicts)

    def reconcile_config(self) -> ReconcileConfig:
        return ReconcileConfig(
            deadline=self.deadline,
            stream_deadlines=dict(self.stream_deadlines),
            expected_groups={s: tuple(g) for s, g in self.expected_groups.items()},
            settle=self.settle,
            remember=self.remember,
            latency_buckets=tuple(self.latency_buckets),
            budget=self.budget,
        )


def _located(
    loc: tuple[int | str, ...], flags: dict[str, object], from_file: dict[str, Any],
    config: str | None,
) -> str:
    """Where a bad value came from: a flag, the environment, or the config file."""
    name = str(loc[0]) if loc else "settings"
    if name in flags or name not in from_file or f"MSGTALLY_{name.upper()}" in os.environ:
        return f"--{name.replace('_', '-')}"
    return f"config file {config}: {name}"


class SettingsError(ValueError):
    """Settings that cannot be used; the message names every bad one, in one line."""

    code = 2


def read_config_file(path: str) -> dict[str, Any]:
    """A config file's settings, by name (`max-series` or `max_series`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read it: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path}: not YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: must be a mapping of settings, got YAML "
                            f"{type(data).__name__}")  # fmt: skip
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in Settings.model_fields or name == "config":
            known = ", ".join(sorted(n for n in Settings.model_fields if n != "config"))
            raise SettingsError(f"config file {path}: unknown setting {key!r} (known: {known})")
        out[name] = value
    return out


def _with_file(values: dict[str, Any]) -> type[Settings]:
    """Settings whose sources are flags, then the environment, then these values."""

    class FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, InitSettingsSource(settings_cls, values)

    return FromFile


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags, then the environment, then the config file, then the defaults."""
    config = getattr(args, "config", None) or os.environ.get("MSGTALLY_CONFIG") or None
    from_file = read_config_file(config) if config else {}
    overrides: dict[str, object] = {}
    for name in (
        "db", "host", "port", "deadline", "settle", "remember", "interval", "max_body",
        "max_inflight", "read_timeout", "max_series", "token_file", "spec", "otlp_grpc_port",
        "log_level", "log_format", "retain", "retain_verdicts", "prometheus_url", "grafana_url",
        "trace_url",
    ):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "latency_buckets", None):
        overrides["latency_buckets"] = args.latency_buckets
    if getattr(args, "no_reconcile", False):
        overrides["reconcile"] = False
    if getattr(args, "metrics_open", False):
        overrides["metrics_open"] = True
    if getattr(args, "ui_open", False):
        overrides["ui_open"] = True
    if getattr(args, "no_otlp_grpc", False):
        overrides["otlp_grpc"] = False
    if getattr(args, "access_log", False):
        overrides["access_log"] = True
    if getattr(args, "stream_deadline", None):
        overrides["stream_deadlines"] = {s: float(v) for s, v in args.stream_deadline}
    if getattr(args, "expect", None):
        expected: dict[str, list[str]] = {}
        for stream, groups in args.expect:
            expected.setdefault(stream, []).extend(g for g in groups.split(",") if g)
        overrides["expected_groups"] = expected
    try:
        settings = _with_file(from_file)(**overrides)  # type: ignore[arg-type]
        settings.reconcile_config()  # validates buckets and deadlines up front
    except ValidationError as exc:
        problems = [_located(e["loc"], overrides, from_file, config) + f": {e['msg'].lower()} "
                    f"(got {e['input']!r})" for e in exc.errors()]  # fmt: skip
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    return settings
