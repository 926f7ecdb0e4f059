"""A real Prometheus (the Debian package's /usr/bin/prometheus) for end-to-end tests.

It scrapes one target and evaluates one rule file, both every second, on a
fresh TSDB under the test's tmp_path; the test skips (or fails under
MSGTALLY_REQUIRE_SERVICES=1) when the binary is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import httpx

from msgtally.server import free_port
from tests.conftest import service_unavailable


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        service_unavailable("prometheus not installed (Debian package prometheus)")
    assert binary is not None
    return binary


def start_prometheus(
    binary: str, tmp: Path, target: str, rules: Path, log: IO[bytes], jobs: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus scraping `target` (host:port) with `rules`; (process, API base URL).

    `jobs` > 1 scrapes the same target under more job names (`msgtally-2`, ...):
    the same series under several label sets, as from collectors behind a load
    balancer that all read one store.
    """
    port = free_port()
    config = tmp / "prometheus.yml"
    names = ["msgtally", *(f"msgtally-{n}" for n in range(2, jobs + 1))]
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n"
        + "".join(
            f"  - {{job_name: {name}, static_configs: [{{targets: ['{target}']}}]}}\n"
            for name in names
        )
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    wait_ready(proc, api)
    return proc, api


def wait_ready(proc: subprocess.Popen[bytes], api: str, timeout: float = 30.0) -> bool:
    """Until Prometheus is ready (before that its API answers 503 in plain text)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{api}/-/ready", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    return False


def stop_prometheus(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Prometheus:
    """A running Prometheus: its process, API and log; `with` stops it."""

    def __init__(self, tmp: Path, target: str, rules: Path, jobs: int = 1) -> None:
        binary = prometheus_binary()
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in __exit__)
        self.proc, self.api = start_prometheus(binary, tmp, target, rules, self._log, jobs)

    def __enter__(self) -> Prometheus:
        if not wait_ready(self.proc, self.api, timeout=1):  # start_prometheus waited 30 s
            self.__exit__()
            raise RuntimeError(f"prometheus not ready within 30s: {self.log()}")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_prometheus(self.proc)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.log()}")

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        """The JSON of an API call (e.g. "query", "query_range", "alerts"); any status."""
        resp = httpx.get(f"{self.api}/api/v1/{path}", params=params, timeout=10)
        body: dict[str, Any] = resp.json()
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result; raises on a PromQL error."""
        body = self.get("query", query=expr)
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
