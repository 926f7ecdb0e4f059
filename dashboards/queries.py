"""The PromQL of every dashboard panel: pure strings, from the same definitions as the rules.

Grafana fills in `$stream` and `$group` (multi-select, with All) and
`$__rate_interval`, `$__range`, `$__interval`.

Grouping by stream and group works for any number of label sets, where
Sloth's boards assume one series per SLI:
- the collector's tallies are read from the store, so every collector
  behind a load balancer exposes the same series: `max by (stream, group)`
  first keeps one series per pair whatever `instance` or `pod` labels the
  scrape added, then `sum by (stream)` adds up the groups of a stream;
- SLO panels read the recording rules (one series per SLO) through `max by
  (slo, stream, group)` on both sides of every division, so external labels
  or a second Prometheus never leave a side unmatched or many-to-many;
- an SLO over every group of its stream carries `group="*"`: SLO panels
  match `$group` or `*`.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgtally.alerts.contracts import breach_series
from msgtally.alerts.promql import PRODUCED, quote
from msgtally.names import (
    ABSENT_ALERT,
    BACKLOG,
    BUDGET_RECORD,
    BURN_ALERT,
    CONTRADICTS_CONTRACT,
    DELIVERY_ERRORS,
    IN_FLIGHT,
    IN_FLIGHT_OLDEST,
    INDICATORS,
    INGEST_RECORDS,
    INGEST_REJECTED,
    LAST_PASS,
    LATENCY,
    RECORDS_DROPPED,
    RECORDS_MISSING,
    REMAINING_RECORD,
    RETRY_FINDINGS,
    SLI_RECORD,
    RatioIndicator,
    SLIKind,
    counter,
)
from msgtally.slis.spec.model import ALL_GROUPS, Contract, Spec
from msgtally.slis.spec.semantics import Breach

RATE = "$__rate_interval"
RANGE = "$__range"
INTERVAL = "$__interval"
PAIR = ("stream", "group")
STREAM = ("stream",)
SLO_LABELS = ("slo", "stream", "group")
# Tally series of the selected streams and groups.
TALLY = 'stream=~"$stream",group=~"$group"'
# Measurement loss of produce records (drop totals, missing records) carries no group
# (group=""): it counts for every group.
DROPS = 'stream=~"$stream",group=~"$group|"'


def _by(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def pair_tally(name: str, window: str, fn: str = "increase", by: Sequence[str] = PAIR) -> str:
    """One series per (stream, group): a tally counter, deduplicated over collectors."""
    return f"max by ({_by(by)}) ({fn}({name}{{{TALLY}}}[{window}]))"


def tally(name: str, window: str, by: Sequence[str] = PAIR, fn: str = "increase") -> str:
    """A tally counter's increase (or rate) per `by`, each (stream, group) counted once."""
    pair = pair_tally(name, window, fn)
    return pair if tuple(by) == PAIR else f"sum by ({_by(by)}) ({pair})"


def ratio(
    errors: Sequence[str], events: Sequence[str], window: str, by: Sequence[str] = PAIR
) -> str:
    """sum(errors) / (sum(events) > 0) per `by`: no traffic gives no sample, never NaN."""
    num = " + ".join(tally(name, window, by) for name in errors)
    den = " + ".join(tally(name, window, by) for name in events)
    if len(errors) > 1:
        num = f"({num})"
    return f"{num}\n/\n({den} > 0)"


def sli_ratio(kind: SLIKind, window: str, by: Sequence[str] = PAIR) -> str:
    """The error ratio of an SLI kind (not latency) per stream or pair, as the rules count it."""
    ind = INDICATORS[kind]
    assert isinstance(ind, RatioIndicator), f"{kind} is not a ratio of counters"
    return ratio(_series(ind.errors), _series(ind.total), window, by)


def _series(columns: Sequence[str]) -> tuple[str, ...]:
    return tuple(counter(c) for c in columns)


def delivery_success(window: str, by: Sequence[str] = STREAM) -> str:
    """delivered / produced (docs/definitions.md, delivery_success_ratio)."""
    ind = INDICATORS[SLIKind.DELIVERY]
    assert isinstance(ind, RatioIndicator)
    return ratio(_series(ind.good), _series(ind.total), window, by)


def attempts_per_message(window: str) -> str:
    return ratio((counter("attempts"),), (PRODUCED,), window, PAIR)


def top_lost(n: int = 10) -> str:
    return f"topk({n}, {pair_tally(counter('lost'), RANGE)})"


# --- SLO panels: the recording rules of the alert rules ---------------------------


def slo_matchers(spec: Spec) -> str:
    """One service's SLOs on the selected streams and groups (or over every group)."""
    every = "\\\\" + ALL_GROUPS  # the regex \* as a PromQL string
    return f'service={quote(spec.service)},stream=~"$stream",group=~"$group|{every}"'


def slo_series(record: str, spec: Spec) -> str:
    return f"max by ({_by(SLO_LABELS)}) ({record}{{{slo_matchers(spec)}}})"


def budget_remaining(spec: Spec) -> str:
    return slo_series(REMAINING_RECORD, spec)


def slo_attainment(spec: Spec, window: str) -> str:
    """1 - the SLO's error ratio over `window` (a window the rules record)."""
    return f"1 - {slo_series(SLI_RECORD + window, spec)}"


def burn_rate(spec: Spec, window: str) -> str:
    """The SLO's error ratio over `window` in units of its error budget."""
    return (
        f"{slo_series(SLI_RECORD + window, spec)}\n"
        f"/ on ({_by(SLO_LABELS)})\n"
        f"{slo_series(BUDGET_RECORD, spec)}"
    )


def firing_alerts(spec: Spec) -> str:
    return (
        f'ALERTS{{alertstate="firing",alertname=~"{BURN_ALERT}|{ABSENT_ALERT}",'
        f"{slo_matchers(spec)}}}"
    )


# --- delivery contracts ------------------------------------------------------------


def contract_breaches(spec: Spec, contract: Contract, breach: Breach) -> str:
    """Breaches of one contract over the dashboard's range, on every group it covers
    (the series of its alert rule: msgtally.alerts.contracts)."""
    series = breach_series(spec, contract, breach)
    return f"sum(max by (stream, group) (increase({series}[{RANGE}])))"


# --- latency ---------------------------------------------------------------------


def latency_quantile(q: float) -> str:
    buckets = pair_tally(f"{LATENCY}_bucket", RATE, "rate", (*PAIR, "le"))
    return f"histogram_quantile({q:g}, {buckets})"


def latency_heatmap() -> str:
    buckets = pair_tally(f"{LATENCY}_bucket", RATE, "rate", (*PAIR, "le"))
    return f"sum by (le) ({buckets})"


# --- measurement and the collector ----------------------------------------------


def _measurement_loss(name: str) -> str:
    return f"max by (stream, group, kind) (rate({name}_total{{{DROPS}}}[{RATE}]))"


def dropped() -> str:
    """Records the shims dropped and counted themselves."""
    return _measurement_loss(RECORDS_DROPPED)


def missing() -> str:
    """Records missing from the shims' numbering, found by the collector."""
    return _measurement_loss(RECORDS_MISSING)


def ingest_records() -> str:
    """Per collector process: summed over collectors."""
    return f"sum by (result) (rate({INGEST_RECORDS}_total[{RATE}]))"


def ingest_rejected() -> str:
    return f"sum by (reason) (rate({INGEST_REJECTED}_total[{RATE}]))"


def reconcile_lag() -> str:
    return f"time() - max({LAST_PASS})"


def reconcile_backlog() -> str:
    return f"max({BACKLOG})"


def in_flight() -> str:
    return f"max by (stream, group) ({IN_FLIGHT}{{{TALLY}}})"


def in_flight_oldest_age() -> str:
    return f"time() - min by (stream, group) ({IN_FLIGHT_OLDEST}{{{TALLY}}})"


# --- error classes ---------------------------------------------------------------

# The classes an on-call acts on at once: a credential rotated or revoked, a
# producer deploy that changed the body's format (docs/adapters.md).
ACT_NOW = ("auth", "serialization")


def _errors(classes: Sequence[str] = ()) -> str:
    """Failed records per second by (stream, group, kind, class), deduplicated over
    collectors; produces carry no group (group=""): they show whatever groups are
    selected."""
    only = f'error=~"{"|".join(classes)}",' if classes else ""
    return (
        "max by (stream, group, kind, error) "
        f"(rate({DELIVERY_ERRORS}_total{{{only}{DROPS}}}[{RATE}]))"
    )


def errors_by_class() -> str:
    """Failed records per second by error class, every selected stream and group."""
    return f"sum by (error) ({_errors()})"


def act_now_errors() -> str:
    """Failed records per second of the auth and serialization classes, per stream,
    group and kind."""
    return f"{_errors(ACT_NOW)} > 0"


# --- retry configurations --------------------------------------------------------


def retry_findings() -> str:
    """Consumer instances per finding of the retry-configuration audit, findings only."""
    return f"max by (stream, group, finding) ({RETRY_FINDINGS}{{{TALLY}}}) > 0"


def retry_contradictions() -> str:
    """Consumer instances configured against their stream's contract (the ticket's series)."""
    finding = f"finding={quote(CONTRADICTS_CONTRACT)}"
    return f"max by (stream, group) ({RETRY_FINDINGS}{{{finding},{TALLY}}}) > 0"
