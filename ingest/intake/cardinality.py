"""A bound on the names that become series.

Every (stream, group) a record names becomes a series on /metrics (the
stream alone, for produces). A client that sends random names would create
series without end: past `max_series` pairs, a record with a new name is
refused (422, naming the limit), and the others keep flowing. So is a record
whose new group would give its stream more groups than the engine holds
(MAX_GROUPS_PER_STREAM): each produced id owes every group of its stream a
verdict, and its entry one slot per group.
"""

from __future__ import annotations

import threading
from collections import Counter

import msgspec
from sqlalchemy import Connection, func, select, tuple_

from msgtally.ingest.intake.limits import DEFAULT_MAX_SERIES, MAX_GROUPS_PER_STREAM
from msgtally.ingest.intake.schema import Batch, RecordError, group_of
from msgtally.store.db import upsert
from msgtally.store.tables import names

Name = tuple[str, str]  # (stream, group); group "" for a stream's produces

# Where the drop totals of shims go when their names do not fit (one series).
OVER_LIMIT = "(over the series limit)"


class NameGuard:
    """The names a store has, cached once seen (names are never removed)."""

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def admit(self, conn: Connection, batch: Batch) -> tuple[Batch, set[tuple[str, str]]]:
        """Record the batch's new names in its transaction, or refuse the batch.

        Returns the batch to store (a drop total under a name that does not fit
        is kept under OVER_LIMIT, a sequence mark is left out: a shim's report
        must not block its records) and the names to `remember` once the
        transaction commits.
        """
        of_records = {(r.stream, group_of(r)) for r in batch.records}
        of_marks = {(m.stream, m.group) for m in batch.sequences or ()}
        wanted = of_records | of_marks | {(d.stream, d.group) for d in batch.drops}
        wanted |= {(c.stream, c.group) for c in batch.retry_configs}
        with self._lock:
            new = wanted - self._known
        if not new:
            return batch, set()
        stored = conn.execute(
            select(names.c.stream, names.c.grp).where(tuple_(names.c.stream, names.c.grp).in_(new))
        ).all()
        new -= {(s, g) for s, g in stored}
        if new:
            records = of_records & new
            fits = self._fits(conn, batch, new, records)
            if fits != new:
                left = new - fits
                batch = batch._replace(drops=[
                    d if (d.stream, d.group) not in left
                    else msgspec.structs.replace(d, stream=OVER_LIMIT, group="")
                    for d in batch.drops
                ])  # fmt: skip
                if batch.sequences is not None:
                    # A sequence under no name cannot be checked: its marks go.
                    batch = batch._replace(
                        sequences=[m for m in batch.sequences if (m.stream, m.group) not in left]
                    )
                # A configuration under no name is left out, like a mark.
                batch = batch._replace(retry_configs=[
                    c for c in batch.retry_configs if (c.stream, c.group) not in left
                ])  # fmt: skip
                wanted = (wanted - new) | fits
                new = fits
            # another collector may be adding the same name right now
            conn.execute(
                upsert(conn, names).on_conflict_do_nothing(),
                [{"stream": s, "grp": g} for s, g in new],
            )
        return batch, wanted

    def remember(self, admitted: set[tuple[str, str]]) -> None:
        with self._lock:
            self._known |= admitted

    def _fits(
        self, conn: Connection, batch: Batch, new: set[Name], records: set[Name]
    ) -> set[Name]:
        """The new names to add: every one of the records, or a refusal; then
        the others (drop totals, marks) while there is room, in name order."""
        count = conn.execute(select(func.count()).select_from(names)).scalar_one()
        if count + len(records) > self.max_series:
            raise self._refusal(batch, new, count)
        streams = {s for s, g in new if g}
        stored = Counter[str](
            dict(
                conn.execute(
                    select(names.c.stream, func.count())
                    .where(names.c.stream.in_(streams), names.c.grp != "")
                    .group_by(names.c.stream)
                ).all()
            )
        )
        adding = Counter(s for s, g in records if g)
        for stream, n in adding.items():
            if stored[stream] + n > MAX_GROUPS_PER_STREAM:
                raise self._group_refusal(batch, new, stream, stored[stream])
        groups = stored + adding
        room = self.max_series - count - len(records)
        fits = set(records)
        for name in sorted(new - records):
            stream, group = name
            if room == 0:
                break
            if group and groups[stream] >= MAX_GROUPS_PER_STREAM:
                continue
            fits.add(name)
            room -= 1
            if group:
                groups[stream] += 1
        return fits

    def _refusal(self, batch: Batch, new: set[Name], count: int) -> RecordError:
        """Names the first record whose new name does not fit any more."""
        reason = (
            f"a new stream or group, and the collector has {count} of its limit of "
            f"{self.max_series} (--max-series)"
        )
        room = self.max_series - count
        fitted: set[Name] = set()
        for i, r in enumerate(batch.records):
            name = (r.stream, group_of(r))
            if name not in new or name in fitted:
                continue
            if len(fitted) < room:
                fitted.add(name)
                continue
            return RecordError(f"records[{i}].{'group' if name[1] else 'stream'}", reason)
        return RecordError("dropped", reason)

    @staticmethod
    def _group_refusal(batch: Batch, new: set[Name], stream: str, count: int) -> RecordError:
        """Names the first record whose new group of `stream` does not fit."""
        reason = (
            f"a new consumer group of stream {stream!r}, which has {count} of the limit of "
            f"{MAX_GROUPS_PER_STREAM} groups per stream"
        )
        fitted: set[str] = set()
        for i, r in enumerate(batch.records):
            group = group_of(r)
            if r.stream != stream or not group or (stream, group) not in new or group in fitted:
                continue
            if count + len(fitted) < MAX_GROUPS_PER_STREAM:
                fitted.add(group)
                continue
            return RecordError(f"records[{i}].group", reason)
        return RecordError("records", reason)  # not reached: some record is past the limit
