"""What the log still holds: the receipt time of its oldest row.

The engine prunes log rows past --retain (msgtally.reconcile.retention); what
it holds from then on is what a back-fill can still scan. Rows set aside in
quarantine stay in the log until retried, and are left out here: they are in
no figure. On the Kafka log the topic's retention prunes it, and each worker's
commit records its partition's oldest message held.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from msgtally.store.tables import log, partitions, quarantine


def log_held_since(conn: Connection) -> float | None:
    """The receipt time of the oldest (lowest-numbered) log row held, quarantined
    rows aside; None when the log holds none. Cheap: one step along the key.

    On the Kafka log (the store has partitions), the latest of the partitions'
    oldest messages held, as their workers' commits recorded them: from then on
    the topic holds every partition's messages; None while a partition's is not
    known (none committed yet, or its topic partition is empty)."""
    held = conn.execute(select(partitions.c.held_since)).scalars().all()
    if held:
        return None if None in held else float(max(held))
    query = (
        select(log.c.received_at)
        .where(log.c.id.not_in(select(quarantine.c.id)))
        .order_by(log.c.id)
        .limit(1)
    )
    value = conn.execute(query).scalar()
    return None if value is None else float(value)
