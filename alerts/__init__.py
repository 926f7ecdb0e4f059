"""Prometheus rules from the SLO spec: recordings, burn-rate alerts, contract
breach alerts, their promtool tests, the Alertmanager inhibition.
"""

__all__ = [
    "alertmanager",
    "contracts",
    "maintenance",
    "promql",
    "promtests",
    "render",
    "rules",
    "selfmon",
    "windows",
]
