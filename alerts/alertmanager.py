"""The Alertmanager side: a page inhibits the ticket of the same SLO; maintenance mutes.

`alertmanager_config` is a complete, minimal Alertmanager configuration (so
`amtool check-config` can prove it); merge its `inhibit_rules`, and with
maintenance windows its `time_intervals` and the routes under `route`, into
yours (maintenance.py says how the routes mute).
"""

from __future__ import annotations

from typing import Any

from msgtally.names import ABSENT_ALERT, BURN_ALERT
from msgtally.slis.spec.model import Spec

from .maintenance import maintenance_routes, time_intervals

RECEIVER = "msgtally-default"


def inhibit_rules() -> list[dict[str, Any]]:
    """While a page burns an SLO's budget, its ticket alerts are noise."""
    return [
        {
            "source_matchers": [f'alertname="{BURN_ALERT}"', 'severity="page"'],
            "target_matchers": [f'alertname=~"{BURN_ALERT}|{ABSENT_ALERT}"', 'severity="ticket"'],
            "equal": ["service", "slo"],
        }
    ]


def alertmanager_config(spec: Spec) -> dict[str, Any]:
    route: dict[str, Any] = {"receiver": RECEIVER, "group_by": ["service", "slo"]}
    routes = maintenance_routes(spec)
    if routes:
        route["routes"] = routes
    config: dict[str, Any] = {
        "route": route,
        "receivers": [{"name": RECEIVER}],
        "inhibit_rules": inhibit_rules(),
    }
    if spec.maintenance:
        config["time_intervals"] = time_intervals(spec)
    return config


def render_alertmanager(spec: Spec) -> str:
    from .render import dump, header

    what = "`inhibit_rules`" + (
        ", `time_intervals` and the maintenance routes under `route`" if spec.maintenance else ""
    )
    return (
        header("alerts --alertmanager", spec.service)
        + f"# A minimal Alertmanager configuration: merge {what} into your own.\n"
        + dump(alertmanager_config(spec))
    )
