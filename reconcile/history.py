"""How long the per-minute and per-hour rows are kept, and their pruning.

The engine adds every tick's deltas to the rows of its minute and its hour
(msgtally.reconcile.outputs); the hour rows are the minute rows rolled up as
they are written, so pruning a minute never loses a figure the hours still
hold. Minutes are kept `--retain` (7 days), hours the longest SLO period
plus 30 days (30 + 30 days without a spec). The log is kept `--retain` too,
the verdict rows of discrepant ids `--retain-verdicts` (90 days): those two
are pruned by msgtally.reconcile.retention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete

from msgtally.store.db import write_tx
from msgtally.store.tables import TIMELINES

DAY = 86_400
DEFAULT_RETAIN = 7 * DAY  # minutes and the log
DEFAULT_RETAIN_VERDICTS = 90 * DAY  # verdict rows, past their id's deadline
DEFAULT_PERIOD = 30 * DAY  # the SLO period assumed without a spec
HOURS_BEYOND_PERIOD = 30 * DAY


@dataclass(frozen=True)
class Retention:
    """Seconds each resolution is kept: minutes (and the log: --retain), hours; and
    verdict rows past their id's deadline (--retain-verdicts)."""

    minutes: float = DEFAULT_RETAIN
    hours: float = DEFAULT_PERIOD + HOURS_BEYOND_PERIOD
    verdicts: float = DEFAULT_RETAIN_VERDICTS

    @classmethod
    def for_period(
        cls, retain: float, longest_period: float | None,
        verdicts: float = DEFAULT_RETAIN_VERDICTS,
    ) -> Retention:  # fmt: skip
        """Minutes `retain`, hours the longest SLO period (30 days without one) + 30 days,
        and never less than the minutes."""
        period = DEFAULT_PERIOD if longest_period is None else longest_period
        return cls(retain, max(retain, period + HOURS_BEYOND_PERIOD), verdicts)


def prune(store: Engine, now: float, retention: Retention) -> int:
    """Delete the rows older than their resolution is kept; the number deleted."""
    with write_tx(store) as conn:
        return prune_rows(conn, now, retention)


def prune_rows(conn: Connection, now: float, retention: Retention) -> int:
    """`prune` in the caller's transaction."""
    deleted = 0
    for (counts, buckets, _step), keep in zip(
        TIMELINES, (retention.minutes, retention.hours), strict=True
    ):
        if math.isinf(keep):
            continue
        cutoff = int(now - keep)
        for table in (counts, buckets):
            deleted += conn.execute(delete(table).where(table.c.at < cutoff)).rowcount
    return deleted
