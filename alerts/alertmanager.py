"""The Alertmanager side: a page inhibits the ticket of the same SLO.

`alertmanager_config` is a complete, minimal Alertmanager configuration (so
`amtool check-config` can prove it); merge its `inhibit_rules` into yours.
"""

from __future__ import annotations

from typing import Any

from msgtally.names import ABSENT_ALERT, BURN_ALERT
from msgtally.slis.spec.model import Spec

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
    return {
        "route": {"receiver": RECEIVER, "group_by": ["service", "slo"]},
        "receivers": [{"name": RECEIVER}],
        "inhibit_rules": inhibit_rules(),
    }


def render_alertmanager(spec: Spec) -> str:
    from .render import dump, header

    return (
        header("alerts --alertmanager", spec.service)
        + "# A minimal Alertmanager configuration: merge `inhibit_rules` into your own.\n"
        + dump(alertmanager_config(spec))
    )
