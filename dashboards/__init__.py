"""Grafana dashboards from the SLO spec: executive, on-call and debug, as JSON."""

from .build import BOARDS, Board, build, generate, marker, tag, uid
from .render import render_dashboard

__all__ = ["BOARDS", "Board", "build", "generate", "marker", "render_dashboard", "tag", "uid"]
