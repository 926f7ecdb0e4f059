"""Prometheus rules from the SLO spec: recordings, burn-rate alerts, their promtool tests."""

from .alertmanager import alertmanager_config, inhibit_rules, render_alertmanager
from .promtests import generate_tests
from .render import render_rules, render_tests
from .rules import generate
from .windows import TIERS, Tier, Window, format_duration, scale

__all__ = [
    "TIERS",
    "Tier",
    "Window",
    "alertmanager_config",
    "format_duration",
    "generate",
    "generate_tests",
    "inhibit_rules",
    "render_alertmanager",
    "render_rules",
    "render_tests",
    "scale",
]
