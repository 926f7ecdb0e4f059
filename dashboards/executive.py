"""The executive dashboard: is delivery within its SLOs, and how much budget is left."""

from __future__ import annotations

from msgtally.names import SLIKind, counter
from msgtally.slis.spec.model import Spec
from msgtally.slis.spec.semantics import FORBIDS

from . import queries as q
from .panels import GREEN, ORANGE, RED, Kind, Panel, Row, Step, Target

TITLE = "Executive"
WHAT = (
    "Delivery against the SLOs over the SLO period: error budget left, delivery success, "
    "loss, duplicate and retry ratios by stream, reconciliation discrepancies."
)


def rows(spec: Spec) -> list[Row]:
    period = spec.period.text
    by_stream = q.STREAM
    return [
        (
            Panel(
                Kind.STAT,
                "Error budget remaining",
                f"Share of each SLO's error budget left over the last {period} "
                "(msgtally:slo_error_budget_remaining:ratio, the alert rules' recording). "
                "Below 0: the SLO is breached.",
                "percentunit",
                (Target(q.budget_remaining(spec), "{{slo}}", instant=True),),
                width=12,
                height=6,
                thresholds=(Step(None, RED), Step(0, ORANGE), Step(0.25, GREEN)),
                max=1,
            ),
            Panel(
                Kind.STAT,
                f"SLO attainment over {period}",
                f"1 - each SLO's error ratio over {period} "
                f"(msgtally:sli_error:ratio_rate{period}), to compare with its objective.",
                "percentunit",
                (Target(q.slo_attainment(spec, period), "{{slo}}", instant=True),),
                width=12,
                height=6,
                decimals=3,
            ),
        ),
        (
            Panel(
                Kind.STAT,
                f"Delivery success by stream over {period}",
                f"Delivered / produced ids over the SLO period ({period}), every selected "
                "group of the stream added up.",
                "percentunit",
                (Target(q.delivery_success(period), "{{stream}}", instant=True),),
                width=8,
                decimals=3,
            ),
            Panel(
                Kind.TIMESERIES,
                "Delivery success by stream, trend",
                "Delivered / produced ids per $__rate_interval window.",
                "percentunit",
                (Target(q.delivery_success(q.RATE), "{{stream}}"),),
                width=16,
                max=1,
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "Loss ratio by stream",
                "Lost / produced ids: not consumed ok by the deadline.",
                "percentunit",
                (Target(q.sli_ratio(SLIKind.DELIVERY, q.RATE, by_stream), "{{stream}}"),),
                width=8,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Duplicate ratio by stream",
                "Ok deliveries beyond the first / all ok deliveries.",
                "percentunit",
                (Target(q.sli_ratio(SLIKind.DUPLICATES, q.RATE, by_stream), "{{stream}}"),),
                width=8,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Retry ratio by stream",
                "Ids sent or delivered more than once / produced ids.",
                "percentunit",
                (Target(q.sli_ratio(SLIKind.RETRIES, q.RATE, by_stream), "{{stream}}"),),
                width=8,
                min=0,
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "Reconciliation discrepancies",
                "Ids per interval that the reconciliation found lost, duplicated (deliveries) "
                "or unexpected (consumed, never produced). The ids themselves: "
                "GET /v1/discrepancies on the collector.",
                "short",
                tuple(
                    Target(
                        q.tally(counter(column), q.INTERVAL, by_stream),
                        f"{{{{stream}}}} {column}",
                    )
                    for column in ("lost", "duplicated", "unexpected")
                ),
                width=24,
                min=0,
                interval="1m",
            ),
        ),
        *_contracts(spec),
    ]


def _contracts(spec: Spec) -> list[Row]:
    """Each declared contract's state: the breaches it forbids, over the range shown."""
    if not spec.contracts:
        return []
    targets = tuple(
        Target(
            q.contract_breaches(spec, c, breach),
            f"{c.stream} / {c.group_label} {c.semantics.value}: {breach.value}",
            instant=True,
        )
        for c in spec.contracts
        for breach in FORBIDS[c.semantics]
    )
    return [
        (
            Panel(
                Kind.STAT,
                "Delivery contracts",
                "Breaches of each declared delivery contract over the range shown: ids lost "
                "on an at-least-once or exactly-once stream, duplicate deliveries on an "
                "at-most-once or exactly-once one (each pages: MsgtallyDeliveryContractBreach). "
                "0: kept. A group's own contract overrides its stream's (*).",
                "short",
                targets,
                width=24,
                height=6,
                thresholds=(Step(None, GREEN), Step(0.001, RED)),
                decimals=0,
            ),
        )
    ]
