"""Grafana dashboards from the SLO spec: executive, on-call and debug, as JSON.
"""

__all__ = [
    "build",
    "debug",
    "executive",
    "maintenance",
    "oncall",
    "panels",
    "queries",
    "render",
    "sdk",
]
