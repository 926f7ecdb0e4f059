"""The on-call dashboard: what burns now, where messages go missing, what is not real loss."""

from __future__ import annotations

from dataclasses import replace

from msgtally.alerts.rules import num
from msgtally.alerts.windows import Window, spec_windows
from msgtally.names import counter
from msgtally.slis.spec.model import Spec

from . import queries as q
from .panels import GREEN, RED, Format, Kind, Panel, Row, Step, Target

TITLE = "On-call"
WHAT = (
    "Live delivery success, burn rate per alert tier against its threshold, firing alerts, "
    "where messages are lost and, beside it, the records the shims dropped or that are "
    "missing from their numbering (measurement loss, not message loss), processing failures "
    "and dead letters, auth and serialization errors."
)
LIVE = "5m"
BURN_UNIT = "suffix:x"


def _burn(spec: Spec, w: Window) -> Panel:
    factor = num(w.factor)
    return Panel(
        Kind.TIMESERIES,
        f"Burn rate, {w.severity} over {w.long_text} and {w.short_text} (fires above {factor}x)",
        f"Each SLO's error ratio over {w.long_text} and {w.short_text} divided by its error "
        f"budget, from the alert rules' recordings (msgtally:sli_error:ratio_rate{w.long_text}, "
        f"_rate{w.short_text}). MsgtallyErrorBudgetBurn severity={w.severity} fires when both "
        f"are above {factor}: at that rate {num(w.share * 100)}% of the budget goes in "
        f"{w.long_text}.",
        BURN_UNIT,
        (
            Target(q.burn_rate(spec, w.long_text), f"{{{{slo}}}} {w.long_text}"),
            Target(q.burn_rate(spec, w.short_text), f"{{{{slo}}}} {w.short_text}"),
        ),
        width=12,
        thresholds=(Step(None, GREEN), Step(w.factor, RED)),
        threshold_lines=True,
        min=0,
    )


def _pairs(panels: list[Panel]) -> list[Row]:
    """Two panels a row; an odd one out (tiers the scrape interval merged) takes the row."""
    rows: list[Row] = [tuple(panels[i : i + 2]) for i in range(0, len(panels) - 1, 2)]
    if len(panels) % 2:
        rows.append((replace(panels[-1], width=24),))
    return rows


def rows(spec: Spec) -> list[Row]:
    burns = [_burn(spec, w) for w in spec_windows(spec)]
    pair = "{{stream}} / {{group}}"
    return [
        (
            Panel(
                Kind.STAT,
                f"Delivery success ({LIVE}) by stream",
                f"Delivered / produced ids over the last {LIVE}, every selected group of the "
                "stream added up. Ids are classified at their deadline: this lags by it.",
                "percentunit",
                (Target(q.delivery_success(LIVE), "{{stream}}"),),
                width=8,
                decimals=2,
            ),
            Panel(
                Kind.TABLE,
                "Firing alerts",
                "MsgtallyErrorBudgetBurn and MsgtallySLIAbsent alerts of this service now "
                "firing, from Prometheus's ALERTS series.",
                "none",
                (Target(q.firing_alerts(spec), instant=True, format=Format.TABLE),),
                width=16,
                hide_columns=("Time", "Value", "__name__", "alertstate"),
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "In flight: produced, not judged yet",
                "Every other figure counts judged ids only: these are under way (no in-time "
                "delivery yet, deadline + settle not reached), in none of them. Climbing while "
                "deliveries stay flat is a stuck consumer before it is a loss.",
                "short",
                (Target(q.in_flight(), pair),),
                width=12,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Oldest in flight: seconds waiting",
                "How long the oldest id not judged yet has waited since its first produce. "
                "Past the stream's deadline it will be judged lost (at deadline + settle).",
                "s",
                (Target(q.in_flight_oldest_age(), pair),),
                width=12,
                min=0,
            ),
        ),
        *_pairs(burns),
        (
            Panel(
                Kind.BARGAUGE,
                "Top streams and groups by lost messages",
                "Ids lost over the dashboard's time range, the ten worst (stream, group) pairs. "
                "The ids: GET /v1/discrepancies?kind=lost on the collector.",
                "short",
                (Target(q.top_lost(), pair, instant=True),),
                width=8,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Measurement loss: records dropped and missing",
                "Not message loss: records the shims dropped before sending them (buffer full, "
                "collector unreachable; their own count), and records missing from their "
                "numbering (found by the collector, from shims that died too). A consume "
                "record missing can make an id look lost, a produce record an id look "
                "unexpected: check here before chasing a loss (/v1/slis says by how much at "
                "most: lost_inflated_by_at_most). Produce records (no group) count for every "
                "group.",
                "cps",
                (
                    Target(q.dropped(), "{{stream}} {{kind}} {{group}} dropped"),
                    Target(q.missing(), "{{stream}} {{kind}} {{group}} missing"),
                ),
                width=8,
                min=0,
            ),
            Panel(
                Kind.TIMESERIES,
                "Processing failures and dead letters",
                "Consume records with outcome error (the consumer failed to process), and "
                "produced ids dead-lettered, per second.",
                "cps",
                (
                    Target(
                        q.tally(counter("consume_errors"), q.RATE, fn="rate"), f"{pair} failed"
                    ),
                    Target(
                        q.tally(counter("dead_lettered"), q.RATE, fn="rate"),
                        f"{pair} dead-lettered",
                    ),
                ),
                width=8,
                min=0,
            ),
        ),
        (
            Panel(
                Kind.TIMESERIES,
                "Auth and serialization errors",
                "Failed sends and deliveries per second of the two classes to act on at once: "
                "auth (a credential rotated, expired or refused), serialization (a body that "
                "does not decode: a producer changed the format). The other classes: the "
                "Debug board; what each adapter counts where: docs/adapters.md.",
                "cps",
                (Target(q.act_now_errors(), f"{pair} {{{{kind}}}} {{{{error}}}}"),),
                width=24,
                min=0,
            ),
        ),
        (
            Panel(
                Kind.TABLE,
                "Consumers configured against their contract",
                "Consumer instances whose announced retry configuration contradicts the "
                "stream's delivery contract (the MsgtallyRetryConfigContradiction ticket): "
                "acks before processing or one attempt on an at-least-once or exactly-once "
                "stream, retries on an at-most-once one. Nothing is lost yet; the "
                "configurations: GET /v1/retry-configs on the collector.",
                "none",
                (Target(q.retry_contradictions(), instant=True, format=Format.TABLE),),
                width=24,
                hide_columns=("Time",),
            ),
        ),
    ]
