"""The collector's settings: one object, validated at start-up.

Read from MSGTALLY_* environment variables; command-line flags override them.
"""

from __future__ import annotations

import argparse

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from msgtally.ingest.limits import DEFAULT_MAX_BODY
from msgtally.ingest.store_url import DEFAULT_DB_URL
from msgtally.reconcile.config import (
    DEFAULT_BUCKETS,
    DEFAULT_BUDGET,
    DEFAULT_DEADLINE,
    DEFAULT_REMEMBER,
    DEFAULT_SETTLE,
    ReconcileConfig,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MSGTALLY_", extra="forbid")

    db: str = DEFAULT_DB_URL
    host: str = "127.0.0.1"
    port: int = Field(default=8410, ge=0, le=65535)
    max_body: int = Field(default=DEFAULT_MAX_BODY, ge=1024)
    reconcile: bool = True
    interval: float = Field(default=0.5, gt=0)
    deadline: float = Field(default=DEFAULT_DEADLINE, gt=0)
    settle: float = Field(default=DEFAULT_SETTLE, ge=0)
    remember: float = Field(default=DEFAULT_REMEMBER, ge=0)
    stream_deadlines: dict[str, float] = Field(default_factory=dict)
    expected_groups: dict[str, list[str]] = Field(default_factory=dict)
    latency_buckets: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS))
    budget: int = Field(default=DEFAULT_BUDGET, ge=1)

    @field_validator("stream_deadlines")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for stream, seconds in value.items():
            if seconds <= 0:
                raise ValueError(f"deadline of stream {stream!r} is {seconds}; must be > 0")
        return value

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


class SettingsError(ValueError):
    """Settings that cannot be used; the message names every bad one, in one line."""

    code = 2


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings, overridden by the flags a command was given."""
    overrides: dict[str, object] = {}
    for name in ("db", "host", "port", "deadline", "settle", "remember", "interval", "max_body"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "latency_buckets", None):
        overrides["latency_buckets"] = args.latency_buckets
    if getattr(args, "no_reconcile", False):
        overrides["reconcile"] = False
    if getattr(args, "stream_deadline", None):
        overrides["stream_deadlines"] = {s: float(v) for s, v in args.stream_deadline}
    if getattr(args, "expect", None):
        expected: dict[str, list[str]] = {}
        for stream, groups in args.expect:
            expected.setdefault(stream, []).extend(g for g in groups.split(",") if g)
        overrides["expected_groups"] = expected
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        settings.reconcile_config()  # validates buckets and deadlines up front
    except ValidationError as exc:
        problems = [
            f"--{str(e['loc'][0]).replace('_', '-') if e['loc'] else 'settings'}: "
            f"{e['msg'].lower()} (got {e['input']!r})"
            for e in exc.errors()
        ]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    return settings
