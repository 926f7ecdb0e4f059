"""A bound on the names that become series.

Every (stream, group) a record names becomes a series on /metrics (the
stream alone, for produces). A client that sends random names would create
series without end: past `max_series` pairs, a record with a new name is
refused (422, naming the limit), and the others keep flowing.
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, func, select, tuple_

from .db import upsert
from .limits import DEFAULT_MAX_SERIES
from .schema import Batch, RecordError, group_of
from .tables import names


class NameGuard:
    """The names a store has, cached once seen (names are never removed)."""

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def admit(self, conn: Connection, batch: Batch) -> set[tuple[str, str]]:
        """Record the batch's new names in its transaction, or refuse the batch;
        returns the names to `remember` once the transaction commits."""
        wanted = {(r.stream, group_of(r)) for r in batch.records}
        wanted |= {(d.stream, d.group) for d in batch.drops}
        with self._lock:
            new = wanted - self._known
        if not new:
            return set()
        stored = conn.execute(
            select(names.c.stream, names.c.grp).where(tuple_(names.c.stream, names.c.grp).in_(new))
        ).all()
        new -= {(s, g) for s, g in stored}
        if new:
            count = conn.execute(select(func.count()).select_from(names)).scalar_one()
            if count + len(new) > self.max_series:
                raise self._refusal(batch, new, count)
            # another collector may be adding the same name right now
            conn.execute(
                upsert(conn, names).on_conflict_do_nothing(),
                [{"stream": s, "grp": g} for s, g in new],
            )
        return wanted

    def remember(self, admitted: set[tuple[str, str]]) -> None:
        with self._lock:
            self._known |= admitted

    def _refusal(self, batch: Batch, new: set[tuple[str, str]], count: int) -> RecordError:
        reason = (
            f"a new stream or group, and the collector has {count} of its limit of "
            f"{self.max_series} (--max-series)"
        )
        for i, r in enumerate(batch.records):
            if (r.stream, group_of(r)) in new:
                field = "group" if group_of(r) else "stream"
                return RecordError(f"records[{i}].{field}", reason)
        return RecordError("dropped", reason)
