"""One engine per store: the lease.

The engine keeps state in memory and writes figures by difference, so two
engines on one store would count everything twice. PostgreSQL: a session
advisory lock, held by a connection kept open for the engine's life (the
server drops it when the engine dies). SQLite: an exclusive lock on a file
beside the database (the kernel drops it when the process dies).
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from sqlalchemy import Engine, text

_LOCK_KEY = 0x6D7367746C6C79  # "msgtlly"


class LeaseHeld(RuntimeError):
    """Another engine is reconciling this store."""


class Lease:
    def __init__(self, store: Engine) -> None:
        self._store = store
        self._held: Any = None

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld at once."""
        if self._store.dialect.name == "postgresql":
            conn = self._store.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
            conn.commit()
            if not got:
                conn.close()
                raise LeaseHeld("another engine holds this store's lease (an advisory lock)")
            self._held = conn
            return
        path = self._store.url.database
        if not path or path == ":memory:":
            self._held = True
            return
        fd_path = f"{path}.engine-lock"
        fd = os.open(fd_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseHeld(f"another engine is reconciling {path} (lock file {fd_path})") from None
        self._held = fd

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if isinstance(held, int):
            os.close(held)  # closing drops the flock
            return
        # The pool would keep the session (and its lock) alive: unlock first, and
        # if the connection is broken the server has dropped the lock already.
        try:
            held.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            held.commit()
        except Exception:
            held.invalidate()
        held.close()

    @property
    def held(self) -> bool:
        return self._held is not None
