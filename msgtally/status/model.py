"""What the status page shows, computed from the store (and the spec): plain data.

One `Objective` per SLO of the spec, or per (stream, group) without one. Its
figures over the SLO period and over each window of the generated alert
rules come from the engine's per-minute rows (msgtally.slis.read.windows),
the same sums /v1/slis?since= gives; budget and forecast from
msgtally.slis.spec.budget; the window pairs from msgtally.alerts.windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from msgtally.alerts.windows import Window, format_duration, scale, spec_windows
from msgtally.ingest.intake.writer import log_ends
from msgtally.names import SLIKind
from msgtally.slis.read.figures import SLI, with_contracts
from msgtally.slis.read.objectives import covers, error_ratio, events
from msgtally.slis.read.query import read_in_flight, read_slis
from msgtally.slis.read.windows import Sums, read_window
from msgtally.slis.spec import budget
from msgtally.slis.spec.model import SLO, Spec
from msgtally.store.engine_facts import engine_facts
from msgtally.store.tables import (
    HOUR,
    quarantine,
    tally_hours,
    tally_minutes,
)

DEFAULT_PERIOD = 30 * 86_400  # without a spec


@dataclass(frozen=True)
class Burn:
    """One window pair of the generated rules: the burn rate over each window."""

    severity: str
    factor: float
    long: int
    short: int
    long_burn: float | None
    short_burn: float | None

    @property
    def label(self) -> str:
        return f"{format_duration(self.long)}/{format_duration(self.short)}"

    @property
    def over(self) -> bool:
        """Both windows above the factor: the rule's condition holds."""
        return all(b is not None and b > self.factor for b in (self.long_burn, self.short_burn))

    def level(self, burn: float | None) -> str:
        """How a burn rate compares with the factor: ok, warn (above half), over."""
        if burn is None:
            return "none"
        return "over" if burn > self.factor else "warn" if burn > self.factor / 2 else "ok"


@dataclass
class Objective:
    """One row of the list, and the head of its detail page."""

    key: str  # the SLO's name, or stream/group
    stream: str
    group: str  # a group, or "*": every group of the stream
    slo: SLO | None
    period: int
    errors: int = 0
    total: int = 0
    allowed: float = 0.0  # errors the period may have (messages)
    elapsed: float = 0.0  # seconds of the period the store covers
    burns: list[Burn] = field(default_factory=list)
    alerts: dict[str, str] = field(default_factory=dict)  # severity -> firing | pending
    slis: list[SLI] = field(default_factory=list)  # the covered pairs, all time (/v1/slis)
    in_flight: int = 0
    too_few: str | None = None

    @property
    def objective(self) -> float | None:
        return self.slo.objective if self.slo is not None else None

    @property
    def kind(self) -> str:
        return self.slo.sli.value if self.slo is not None else SLIKind.DELIVERY.value

    @property
    def success(self) -> float | None:
        ratio = error_ratio(self.errors, self.total)
        return None if ratio is None else 1 - ratio

    @property
    def below(self) -> bool:
        obj = self.objective
        return obj is not None and self.success is not None and self.success * 100 < obj

    @property
    def budget_left(self) -> float | None:
        return budget.budget_left(self.errors, self.allowed) if self.slo else None

    @property
    def may_still_lose(self) -> int | None:
        """Errors the period may still have, in messages (0 once spent)."""
        if self.slo is None or self.allowed <= 0:
            return None
        return max(0, int(self.allowed - self.errors))

    @property
    def period_burn(self) -> float | None:
        """The burn rate over the period so far."""
        ratio = error_ratio(self.errors, self.total)
        if ratio is None or self.slo is None:
            return None
        return budget.burn_rate(ratio, self.slo.objective)

    @property
    def runs_out_in(self) -> float | None:
        """Seconds until the budget runs out at the period's burn rate so far."""
        left, burn = self.budget_left, self.period_burn
        if left is None or burn is None:
            return None
        return budget.exhaustion(left, burn, self.period)

    @property
    def breaches(self) -> dict[str, int] | None:
        """The contract's breaches over the covered pairs (running totals), or None."""
        found = [s.contract_breaches() for s in self.slis if s.contract is not None]
        if not found:
            return None
        out: dict[str, int] = {}
        for b in found:
            for name, n in (b or {}).items():
                out[name] = out.get(name, 0) + n
        return out

    @property
    def contract(self) -> str | None:
        names = sorted({s.contract.value for s in self.slis if s.contract is not None})
        return ", ".join(names) or None

    @property
    def observed(self) -> str | None:
        names = [s.observed_semantics() for s in self.slis]
        known = sorted({n for n in names if n})
        return ", ".join(known) or None

    @property
    def loss(self) -> dict[str, int]:
        """Measurement loss of the covered pairs: dropped, missing, the inflation bound."""
        return {
            "dropped": sum(s.records_dropped for s in self.slis),
            "missing": sum(s.produce_records_missing + s.consume_records_missing
                           for s in self.slis),
            "inflated": sum(s.inflation()["lost_inflated_by_at_most"] for s in self.slis),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "stream": self.stream, "group": self.group,
            "objective": self.objective, "errors": self.errors, "total": self.total,
            "success": self.success, "budget_left": self.budget_left,
            "may_still_lose": self.may_still_lose, "runs_out_in": self.runs_out_in,
            "burns": [{"window": b.label, "factor": b.factor, "long": b.long_burn,
                       "short": b.short_burn} for b in self.burns],
            "breaches": self.breaches, "in_flight": self.in_flight,
        }  # fmt: skip


def slo_key(slo: SLO) -> str:
    return slo.name


def first_at(conn: Connection, pairs: Sequence[tuple[str, str]]) -> int | None:
    """When the store's rows of these pairs begin: their oldest minute, or hour once
    those minutes are pruned."""
    firsts = []
    for t in (tally_minutes, tally_hours):
        found = []
        for stream, group in pairs:
            query = select(func.min(t.c.at)).where(t.c.stream == stream, t.c.grp == group)
            at = conn.execute(query).scalar()
            if at is not None:
                found.append(int(at))
        firsts.append(min(found) if found else None)
    minute, hour = firsts
    if minute is not None and (hour is None or minute < hour + HOUR):
        return minute  # the minutes reach back to the first hour: none pruned
    return hour


def _windows(spec: Spec | None) -> tuple[Window, ...]:
    if spec is None:
        return scale(DEFAULT_PERIOD)
    return spec_windows(spec)


def objectives(conn: Connection, spec: Spec | None, now: float) -> list[Objective]:
    """Every row of the list, with its period, burn and alert figures."""
    period = spec.period.seconds if spec is not None else DEFAULT_PERIOD
    windows = _windows(spec)
    all_time = with_contracts(read_slis(conn), spec)
    flight = {(f.stream, f.group): f.n for f in read_in_flight(conn)}
    by_window: dict[int, list[Sums]] = {}

    def sums(seconds: int) -> list[Sums]:
        if seconds not in by_window:
            by_window[seconds] = read_window(conn, now, seconds)
        return by_window[seconds]

    rows: list[Objective] = []
    if spec is not None and spec.slos:
        for slo in spec.slos:
            o = Objective(slo_key(slo), slo.stream, slo.group_label, slo, period)
            o.slis = [s for s in all_time if covers(slo, s.stream, s.group)]
            rows.append(o)
    else:
        for s in all_time:
            if s.group:
                o = Objective(f"{s.stream}/{s.group}", s.stream, s.group, None, period)
                o.slis = [s]
                rows.append(o)
    for o in rows:
        slo = o.slo or _delivery(o.stream, o.group)
        o.errors, o.total = events(slo, sums(period))
        pairs = [(s.stream, s.group) for s in o.slis]
        first = first_at(conn, pairs)
        o.elapsed = min(period, max(60.0, now - first)) if first is not None else 0.0
        if o.slo is not None:
            o.allowed = budget.period_budget(o.total, o.elapsed, period, o.slo.objective)
            o.burns = [_burn(w, o.slo, sums) for w in windows]
            o.too_few = _too_few(o.slo, windows, sums)
        o.in_flight = sum(flight.get(p, 0) for p in pairs)
    return rows


def _delivery(stream: str, group: str) -> SLO:
    """The delivery SLI of one pair, for rows without a spec (no objective shown)."""
    return SLO(name=f"{stream}/{group}", stream=stream, sli=SLIKind.DELIVERY, objective=99.0,
               group=group)  # fmt: skip


def _burn(w: Window, slo: SLO, sums: Any) -> Burn:
    out = []
    for seconds in (w.long, w.short):
        ratio = error_ratio(*events(slo, sums(seconds)))
        out.append(None if ratio is None else budget.burn_rate(ratio, slo.objective))
    return Burn(w.severity, w.factor, w.long, w.short, out[0], out[1])


def _too_few(slo: SLO, windows: Sequence[Window], sums: Any) -> str | None:
    """Fewer events in the fastest page's long window than one error takes to burn
    past its factor: one loss there pages, the SLI is noise."""
    page = min(windows, key=lambda w: w.long)
    _, total = events(slo, sums(page.long))
    needed = page.factor * budget.error_budget(slo.objective)
    if total and 1 / total > needed:
        return (f"too few messages: {total} in {format_duration(page.long)}, one error "
                f"there burns {1 / total / budget.error_budget(slo.objective):.0f}x")
    if not total:
        return f"no messages in {format_duration(page.long)}"
    return None


@dataclass(frozen=True)
class Freshness:
    """The engine as the store shows it: its last tick, backlog, quarantined rows."""

    last_tick: float | None
    backlog: int
    quarantined: int

    def age(self, now: float) -> float | None:
        return None if self.last_tick is None else max(0.0, now - self.last_tick)


def freshness(conn: Connection) -> Freshness:
    facts = engine_facts(conn, log_ends(conn.engine))
    aside = conn.execute(select(func.count()).select_from(quarantine)).scalar_one()
    return Freshness(facts.last_pass, facts.backlog, int(aside))
