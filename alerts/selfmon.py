"""Rules that watch msgtally itself: the collector, the engine, measurement loss.

One group `msgtally-<service>-self` per spec, over the series of the
collector's Prometheus job (`collector_job` in the spec, `--collector-job`,
default `msgtally`):

- MsgtallyCollectorDown (page, for 5m): a target of the job is down
  (`up == 0`), or the job has none (`instance="(no target)"`);
- MsgtallyReconcileStalled (page, for 2m): no engine pass for 3m while
  records wait, or none ever;
- MsgtallyReconcileBacklogGrowing (ticket, for 15m): the backlog is larger
  than 10m before, and than what the engine applied in 5m;
- MsgtallyLogRowsQuarantined (ticket): log rows quarantined
  (`msgtally_reconcile_quarantined_rows` > 0);
- MsgtallyMeasurementLoss (ticket, label `loss`: dropped or missing):
  records dropped by the shims, or missing from their numbering, in 15m.

Every collector behind a load balancer reads one store and exposes the same
store figures: each is read as `max(...)` over the job. A gauge is read as
its highest value over the last four scrape intervals (`max_over_time`), a
counter's growth as the difference of two such reads: a missed scrape (every
series of the target stale until the next) never resolves, restarts the
`for` of, or pages twice for any of them; pages also have `keep_firing_for`.
"""

from __future__ import annotations

from typing import Any

from msgtally.names import (
    BACKLOG,
    LAST_PASS,
    RECONCILE_RECORDS,
    RECORDS_DROPPED,
    RECORDS_MISSING,
)
from msgtally.slis.spec.model import Spec

from .promql import quote
from .windows import floor, format_duration, keep_firing_for

GROUP_NAME = "msgtally-{service}-self"
# The gauge of log rows the engine set aside (it could not apply them). Another branch
# adds it to the exposition; its name belongs in msgtally.names once it is there.
QUARANTINED = "msgtally_reconcile_quarantined_rows"

COLLECTOR_DOWN = "MsgtallyCollectorDown"
STALLED = "MsgtallyReconcileStalled"
BACKLOG_GROWING = "MsgtallyReconcileBacklogGrowing"
QUARANTINE = "MsgtallyLogRowsQuarantined"
MEASUREMENT_LOSS = "MsgtallyMeasurementLoss"
ALERTS = (COLLECTOR_DOWN, STALLED, BACKLOG_GROWING, QUARANTINE, MEASUREMENT_LOSS)

DOWN_FOR = 300  # a restart, a missed scrape or two: no page
STALL_AFTER = 180  # seconds without an engine pass while records wait...
STALL_FOR = 120  # ...for this long: a page 5 minutes into a stall
GROWING_OVER = 600  # the backlog is larger than this long ago...
GROWING_WORK = 300  # ...and than this long of the engine's work...
GROWING_FOR = 900  # ...for this long
LOSS_WINDOW = 900  # measurement loss counted over this window

Rule = dict[str, Any]


def _seconds(seconds: int, spec: Spec) -> str:
    """A window of `seconds`, and at least four scrape intervals."""
    return format_duration(max(seconds, floor(spec.scrape_interval)))


def _range(spec: Spec) -> str:
    """The shortest window: four scrape intervals."""
    return format_duration(floor(spec.scrape_interval))


def _job(spec: Spec) -> str:
    return f"job={quote(spec.collector_job)}"


def _gauge(name: str, spec: Spec, offset: int = 0) -> str:
    """A gauge (or counter) of the job: its highest value over the last four scrapes."""
    shift = f" offset {format_duration(offset)}" if offset else ""
    return f"max(max_over_time({name}{{{_job(spec)}}}[{_range(spec)}]{shift}))"


def _labels(spec: Spec, severity: str, **extra: str) -> dict[str, str]:
    return {
        "severity": severity,
        "service": spec.service,
        **extra,
        **dict(sorted(spec.labels.items())),
    }


def _page(spec: Spec) -> dict[str, str]:
    return {"keep_firing_for": format_duration(keep_firing_for(spec.scrape_interval))}


NO_TARGET = "(no target)"  # the instance of the collector-down alert when the job has none


def collector_down(spec: Spec) -> Rule:
    """A target of the job down, or none at all (its `instance` then says so)."""
    up = f"up{{{_job(spec)}}}"
    job = spec.collector_job
    return {
        "alert": COLLECTOR_DOWN,
        "expr": f"{up} == 0\nor\n"
        f'label_replace(absent({up}), "instance", {quote(NO_TARGET)}, "", "")',
        "for": format_duration(DOWN_FOR),
        **_page(spec),
        "labels": _labels(spec, "page"),
        "annotations": {
            "summary": f"msgtally collector {{{{ $labels.instance }}}} (job {job}) is down",
            "description": "Prometheus has not scraped the msgtally collector "
            f"{{{{ $labels.instance }}}} of job {job} for {format_duration(DOWN_FOR)} "
            f"({NO_TARGET}: the job has no target at all). While no collector answers, "
            f"nothing of service {spec.service} is measured and its SLO alerts cannot "
            "fire; shims buffer their records, then drop them (measurement loss).",
            "runbook": "1. GET /healthz on the collector: no answer is a dead process or "
            "network, 401 a token Prometheus lacks (serve --metrics-open). 2. Read the "
            "collector's log since it stopped; restart it (the figures come from the store "
            f"and survive). 3. {NO_TARGET}: compare the scrape config's job name with the "
            "spec's collector_job (or --collector-job). 4. Afterwards expect "
            f"{MEASUREMENT_LOSS} for what the shims dropped meanwhile.",
        },
    }


def reconcile_stalled(spec: Spec) -> Rule:
    last = _gauge(LAST_PASS, spec)
    never = f"absent_over_time({LAST_PASS}{{{_job(spec)}}}[{_range(spec)}])"
    waiting = f"{_gauge(BACKLOG, spec)} > 0"
    return {
        "alert": STALLED,
        "expr": f"(\n  time() - {last} > {STALL_AFTER}\n  or\n  {never}\n)\n"
        f"and on ()\n{waiting}",
        "for": format_duration(STALL_FOR),
        **_page(spec),
        "labels": _labels(spec, "page"),
        "annotations": {
            "summary": "msgtally's engine has not completed a pass for "
            f"{format_duration(STALL_AFTER)} while records wait",
            "description": f"Records of service {spec.service} are logged (job "
            f"{spec.collector_job}: {BACKLOG} > 0) but the engine's last pass "
            f"({LAST_PASS}) is older than {format_duration(STALL_AFTER)}, or it never "
            "passed: no verdict is given, the figures are frozen and no SLO alert can fire.",
            "runbook": "1. Is an engine running? `msgtally serve` runs one unless "
            "--no-reconcile; else `msgtally reconcile --loop` somewhere, one per store (a "
            "lease). 2. /readyz on a collector names the reason when ticks stop. 3. Read the "
            "engine's log for the error of each failed tick; a store that does not answer "
            "stops it too. 4. Once it runs again the backlog drains and verdicts catch up: "
            "nothing is lost.",
        },
    }


def backlog_growing(spec: Spec) -> Rule:
    now = _gauge(BACKLOG, spec)
    before = _gauge(BACKLOG, spec, offset=GROWING_OVER)
    work = (
        f"sum(max by (result) (increase({RECONCILE_RECORDS}_total{{{_job(spec)}}}"
        f"[{_seconds(GROWING_WORK, spec)}])))"
    )
    return {
        "alert": BACKLOG_GROWING,
        "expr": f"{now} > {before}\nand on ()\n{now} > {work}",
        "for": format_duration(GROWING_FOR),
        "labels": _labels(spec, "ticket"),
        "annotations": {
            "summary": "msgtally's engine is falling behind: its backlog keeps growing",
            "description": f"For {format_duration(GROWING_FOR)} the records logged and not "
            f"yet applied ({BACKLOG}, job {spec.collector_job}) have been more than "
            f"{format_duration(GROWING_OVER)} before, and more than the engine applied in "
            f"{format_duration(GROWING_WORK)}: verdicts of service {spec.service} lag further "
            "and further behind.",
            "runbook": "1. Compare the intake (msgtally_ingest_records_total) with what the "
            "engine applies (msgtally_reconcile_records_total): a traffic increase, or a "
            "slower engine? 2. The engine's log: ticks that take long (a new group's "
            "back-fill, a slow store). 3. A budget per tick too small for the traffic, or "
            "a store near its limits (docs/scaling.md).",
        },
    }


def quarantined(spec: Spec) -> Rule:
    return {
        "alert": QUARANTINE,
        "expr": f"{_gauge(QUARANTINED, spec)} > 0",
        "labels": _labels(spec, "ticket"),
        "annotations": {
            "summary": "{{ $value }} log rows quarantined by msgtally's engine",
            "description": f"The engine set aside log rows it could not apply ({QUARANTINED}"
            f", job {spec.collector_job}): their records count nowhere, so the figures of "
            f"service {spec.service} may understate what happened.",
            "runbook": "1. The engine's log names each quarantined row and why. 2. Fix the "
            "cause (a record the engine cannot read, a store error), then have the engine "
            "apply the rows again or delete them; the gauge goes back to 0.",
        },
    }


def measurement_loss(spec: Spec, loss: str, series: str) -> Rule:
    by = "max by (stream, group, kind)"
    selector = f"{series}{{{_job(spec)}}}"
    now = f"{by} (max_over_time({selector}[{_range(spec)}]))"
    window = format_duration(LOSS_WINDOW)
    # The count before the window; for a series younger than that, its first value (a
    # shim's first report may be history: only what it adds after counts).
    before = (
        f"{by} (max_over_time({selector}[{_range(spec)}] offset {window}))\n"
        f"  or\n  {by} (min_over_time({selector}[{_seconds(LOSS_WINDOW, spec)}]))"
    )
    what = {
        "dropped": "dropped by the shims before sending (buffer full, collector "
        "unreachable)",
        "missing": "missing from the shims' numbering (found by the collector: shims that "
        "died, records lost on the way)",
    }[loss]
    return {
        "alert": MEASUREMENT_LOSS,
        "expr": f"{now}\n- (\n  {before}\n)\n> 0",
        "labels": _labels(spec, "ticket", loss=loss),
        "annotations": {
            "summary": f"{{{{ $value }}}} {{{{ $labels.kind }}}} records {loss} on "
            f"{{{{ $labels.stream }}}} in {format_duration(LOSS_WINDOW)}",
            "description": f"{{{{ $value }}}} {{{{ $labels.kind }}}} records of stream "
            f'{{{{ $labels.stream }}}} (group "{{{{ $labels.group }}}}") were {what} in the '
            f"last {format_duration(LOSS_WINDOW)} ({series}). Measurement loss, not "
            "message loss: a consume record missing makes an id look lost, a produce record "
            "missing makes one look unexpected.",
            "runbook": "1. Before chasing a loss of these streams, check here: /v1/slis "
            "says by how much the figures may be off (lost_inflated_by_at_most). 2. Dropped: "
            "the shim's log and its buffer size, and whether the collector was reachable "
            f"({COLLECTOR_DOWN}). 3. Missing: shims that died or were killed, or a proxy "
            "dropping requests.",
        },
    }


def self_rules(spec: Spec) -> list[Rule]:
    return [
        collector_down(spec),
        reconcile_stalled(spec),
        backlog_growing(spec),
        quarantined(spec),
        measurement_loss(spec, "dropped", f"{RECORDS_DROPPED}_total"),
        measurement_loss(spec, "missing", f"{RECORDS_MISSING}_total"),
    ]
