"""A private PostgreSQL cluster for a test that restarts its store: `initdb`
and `pg_ctl` (on PATH, else Debian's /usr/lib/postgresql/<version>/bin) run
as the `postgres` user in a directory of its own, on a free port, stopped at
the end. The shared server on 5432 is never
touched (other tests use it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from msgtally.server import free_port

USER = "postgres"


def _program(name: str) -> str:
    """`name` on PATH, else from the newest of Debian's server packages (whose
    programs are not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)  # fmt: skip
    return str(versions[-1]) if versions else name


def _as_postgres(*command: str) -> subprocess.CompletedProcess[str]:
    command = (_program(command[0]), *command[1:])
    if os.geteuid() == 0:
        command = ("runuser", "-u", USER, "--", *command)
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)


class PrivateCluster:
    """`initdb` in a temporary directory; `start`, `stop(mode)`; `url` names its
    database `msgtally`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="msgtally-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/msgtally"
        if os.geteuid() == 0:
            shutil.chown(self.root, USER)
        _as_postgres("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        _as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                     str(self.root / "server.log"), "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`immediate`: the server quits without a checkpoint (as after a crash);
        the next start recovers from the WAL."""
        _as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self) -> None:
        _as_postgres("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "msgtally")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def private_cluster() -> Iterator[PrivateCluster]:
    """A started cluster with an empty `msgtally` database, removed afterwards;
    one that cannot start is a missing service (a skip that says why)."""
    from tests.conftest import service_unavailable

    try:
        cluster = PrivateCluster()
    except (OSError, subprocess.CalledProcessError) as exc:
        service_unavailable(f"initdb as {USER} failed: {exc}")
        return
    try:
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        cluster.remove()
