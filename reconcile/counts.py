"""The outcome definitions of docs/definitions.md as SQL expressions.

Each classified (stream, message id, group) row counts for a vector of
outcomes; the tallies move by count(new state) - count(old state), so records
that arrive after the classification add exactly what they change. All the
rules of what a row counts for live here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Null, case, literal, null
from sqlalchemy.sql.expression import and_

Expr = ColumnElement[object]

# The classes an id takes when its deadline passes (per group).
DELIVERED = "delivered"
LOST = "lost"
RECOVERED = "recovered"
UNEXPECTED = "unexpected"
NONE = "none"  # every produce indeterminate, never consumed ok: counts nothing
NOGROUP = "nogroup"  # produced on a stream no group consumes (yet): counts nothing


@dataclass(frozen=True)
class State:
    """Column expressions of one row's state (a table or a scratch projection)."""

    cls: Expr
    acked: Expr
    p_any: Expr
    late: Expr
    n: Expr
    ok: Expr
    max_attempt: Expr
    dl: Expr
    latency: Expr


def _flag(cond: ColumnElement[bool]) -> Expr:
    return case((cond, literal(1)), else_=literal(0))


def counts(s: State) -> Mapping[str, Expr]:
    """What one row counts for. An absent row (all NULL) counts zero everywhere."""
    return {
        "produced": _flag(and_(s.acked == 1, s.cls != NOGROUP)),
        "delivered": _flag(s.cls == DELIVERED),
        "lost": _flag(s.cls == LOST),
        "late": _flag(s.late == 1),
        "recovered": _flag(s.cls == RECOVERED),
        "unexpected": _flag(s.cls == UNEXPECTED),
        "duplicated": case(
            (and_(s.p_any == 1, s.cls != NOGROUP, s.ok > 1), s.ok - 1), else_=literal(0)
        ),
        "retried": _flag(and_(s.p_any == 1, s.cls != NOGROUP, s.max_attempt > 1)),
        "attempts": case((and_(s.p_any == 1, s.cls != NOGROUP), s.n), else_=literal(0)),
        "dead_lettered": _flag(and_(s.acked == 1, s.cls != NOGROUP, s.dl == 1)),
        "latency_count": _flag(s.latency.is_not(None)),
    }


def classify(
    *, p_any: ColumnElement[bool], acked: Expr, ok: Expr, ok_in_time: Expr, has_group: Expr
) -> Expr:
    """The class of an id for one group once its deadline has passed."""
    return case(
        (has_group == 0, literal(NOGROUP)),
        (~p_any, literal(UNEXPECTED)),
        (acked == 1, case((ok_in_time > 0, literal(DELIVERED)), else_=literal(LOST))),
        (ok > 0, literal(RECOVERED)),
        else_=literal(NONE),
    )


def advance_cls(old_cls: Expr, ok: Expr) -> Expr:
    """A class after more records arrived: only an unconsumed indeterminate id moves."""
    return case((and_(old_cls == NONE, ok > 0), literal(RECOVERED)), else_=old_cls)


def advance_late(old_cls: Expr, old_late: Expr, ok: Expr) -> Expr:
    """A lost id consumed ok after its verdict is late (lost stays counted)."""
    return case((and_(old_cls == LOST, ok > 0), literal(1)), else_=old_late)


def first_latency(
    acked: Expr, old_latency: Expr | Null, ok: Expr, first_ok: Expr, t0: Expr
) -> Expr:
    """Latency is observed once, when the first ok consume of a produced id is known."""
    return case(
        (old_latency.is_not(None), old_latency),
        (and_(acked == 1, ok > 0), first_ok - t0),
        else_=null(),
    )
