"""Log rows set aside: bodies the machine rejects (BodyError), out of the way.

A tick that meets such a row moves it, in the tick's own transaction, from
log_pending into the quarantine table with the machine's reason, and goes on
with the rows after it: one bad row never stalls the engine, and never makes
the collector unready. The log row itself stays in the log. `retry` puts rows
back in log_pending (after a fix: a new msgtally, a repaired log row); the
next tick applies them, or sets them aside again with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, insert, select

from msgtally.store.db import write_tx
from msgtally.store.tables import log_pending, quarantine


@dataclass(frozen=True)
class Quarantined:
    id: int  # the log row's
    received_at: float
    records: int
    bytes: int
    reason: str
    quarantined_at: float

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "records": self.records,
            "bytes": self.bytes,
            "reason": self.reason,
            "quarantined_at": self.quarantined_at,
        }


def set_aside(conn: Connection, rows: Sequence[tuple[int, float, int, bytes, str]]) -> None:
    """Moves log rows (id, received_at, records, body, reason) out of log_pending."""
    if not rows:
        return
    now = time.time()
    conn.execute(
        insert(quarantine),
        [
            {"id": i, "received_at": at, "n": n, "body": body, "reason": reason,
             "quarantined_at": now}
            for i, at, n, body, reason in rows
        ],
    )  # fmt: skip
    conn.execute(delete(log_pending).where(log_pending.c.id.in_([r[0] for r in rows])))


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(quarantine)).scalar_one())


def listed(conn: Connection) -> list[Quarantined]:
    q = quarantine
    query = select(
        q.c.id, q.c.received_at, q.c.n, func.length(q.c.body), q.c.reason, q.c.quarantined_at
    ).order_by(q.c.id)
    return [Quarantined(int(i), float(at), int(n), int(size), reason, float(when))
            for i, at, n, size, reason, when in conn.execute(query)]  # fmt: skip


class NotQuarantined(LookupError):
    """Ids asked for that are not in quarantine."""


def retry(store: Engine, ids: Sequence[int] | None) -> list[int]:
    """Puts quarantined rows (these ids, or all with None) back for the engine.

    Raises NotQuarantined, putting back none, when an id is not in quarantine.
    """
    with write_tx(store) as conn:
        query = select(quarantine.c.id, quarantine.c.received_at, quarantine.c.n)
        if ids is not None:
            query = query.where(quarantine.c.id.in_(list(ids)))
        rows = conn.execute(query.order_by(quarantine.c.id)).all()
        if ids is not None and (unknown := sorted(set(ids) - {int(r.id) for r in rows})):
            raise NotQuarantined(
                f"not in quarantine: {', '.join(map(str, unknown))} (msgtally quarantine list)"
            )
        if rows:
            conn.execute(
                insert(log_pending),
                [{"id": r.id, "received_at": r.received_at, "n": r.n} for r in rows],
            )
            conn.execute(delete(quarantine).where(quarantine.c.id.in_([r.id for r in rows])))
    return [int(r.id) for r in rows]
