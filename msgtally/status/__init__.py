"""The status page the collector serves at `/`: the SLOs, their budgets and burn rates,
and the ids behind each count (docs/status-page.md).

`pages` (routes and templates), `model` (what a row shows), `series` (the
graphs), `prom` (the alerts' state from Prometheus).
"""

__all__ = ["model", "pages", "prom", "series"]
