"""Prometheus rules from the SLO spec: recordings, burn-rate alerts, contract
breach alerts, the retry-configuration ticket, their promtool tests, the Alertmanager inhibition.
"""

__all__ = [
    "alertmanager",
    "contracts",
    "maintenance",
    "promql",
    "promtests",
    "render",
    "retry",
    "rules",
    "selfmon",
    "windows",
]
