"""What the log still holds: the receipt time of its oldest row.

The engine prunes log rows past --retain (msgtally.reconcile.retention); what
it holds from then on is what a back-fill can still scan. Rows set aside in
quarantine stay in the log until retried, and are left out here: they are in
no figure.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from msgtally.store.tables import log, quarantine


def log_held_since(conn: Connection) -> float | None:
    """The receipt time of the oldest (lowest-numbered) log row held, quarantined
    rows aside; None when the log holds none. Cheap: one step along the key."""
    query = (
        select(log.c.received_at)
        .where(log.c.id.not_in(select(quarantine.c.id)))
        .order_by(log.c.id)
        .limit(1)
    )
    value = conn.execute(query).scalar()
    return None if value is None else float(value)
