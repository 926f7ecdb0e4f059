"""Reading what the consumer instances announced, for the retry-configuration audit."""

from __future__ import annotations

from sqlalchemy import Connection, select

from msgtally.slis.spec.model import Spec
from msgtally.store.tables import RETRY_CONFIG_TTL, retry_configs

from .retry_audit import Announced, GroupAudit, Setting, audit


def read_announced(
    conn: Connection, now: float, stream: str | None = None, group: str | None = None
) -> list[Announced]:
    """The configurations instances announced within RETRY_CONFIG_TTL of `now`."""
    t = retry_configs.c
    query = select(retry_configs).where(t.seen_at >= now - RETRY_CONFIG_TTL)
    if stream is not None:
        query = query.where(t.stream == stream)
    if group is not None:
        query = query.where(t.grp == group)
    return [
        Announced(
            stream=r.stream,
            group=r.grp,
            instance=r.source,
            setting=Setting(
                acks=r.acks,
                max_attempts=r.max_attempts,
                backoff_base=float(r.backoff_base),
                backoff_cap=float(r.backoff_cap),
                jitter=bool(r.jitter),
                dead_letter=r.dead_letter,
            ),
        )
        for r in conn.execute(query)
    ]


def read_audit(
    conn: Connection,
    now: float,
    spec: Spec | None,
    stream: str | None = None,
    group: str | None = None,
) -> list[GroupAudit]:
    """The audit of the configurations in use (msgtally.slis.read.retry_audit)."""
    return audit(read_announced(conn, now, stream, group), spec)
