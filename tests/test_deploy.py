"""The deployment files of examples/deploy/, built and checked with what this
machine has: systemd's own verifier, promtool, the collector's command-line
parser and app, and (slow) the Dockerfile's steps run as a script."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from msgtally.app import create_app
from msgtally.cli import build_parser
from msgtally.server import BackgroundServer, free_port
from msgtally.settings import Settings, read_config_file
from msgtally.store.db import open_store
from msgtally.store.kafka_log import parse_log_url
from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "examples" / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        service_unavailable(f"{name} not installed")
    assert path is not None
    return path


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    verify = _tool("systemd-analyze")
    msgtally = shutil.which("msgtally") or str(Path(sys.executable).parent / "msgtally")
    unit = (DEPLOY / "msgtally.service").read_text()
    assert "DynamicUser=yes" in unit and "StateDirectory=msgtally" in unit
    local = tmp_path / "msgtally.service"
    local.write_text(unit.replace("/opt/msgtally/bin/msgtally", msgtally))
    proc = subprocess.run([verify, "verify", str(local)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "msgtally.service" not in proc.stderr, proc.stderr  # no warning about the unit
    # Its command is one the collector takes.
    start = unit.split("ExecStart=", 1)[1].split("\n# ")[0].replace("\\\n", " ")
    args = shlex.split(start)[1:]
    build_parser().parse_args(args)


def test_the_prometheus_configuration_checks(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    rules = subprocess.run(
        [sys.executable, "-m", "msgtally.cli", "alerts", str(ROOT / "examples" / "checkout.yml"),
         "-o", str(tmp_path / "msgtally.rules.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert rules.returncode == 0, rules.stderr
    (tmp_path / "msgtally.token").write_text("secret\n")
    config = (DEPLOY / "prometheus.yml").read_text()
    config = config.replace("/etc/prometheus/msgtally.token", str(tmp_path / "msgtally.token"))
    (tmp_path / "prometheus.yml").write_text(config)
    proc = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rules found" not in proc.stdout  # the generated rules were loaded with it
    assert "SUCCESS" in proc.stdout


def _containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (doc["metadata"]["name"], c)
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]


def _selected(docs: list[dict[str, Any]], label: str) -> set[tuple[str, str]]:
    """What `kubectl apply -l LABEL=yes` applies."""
    return {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("labels", {}).get(label) == "yes"
    }


def test_the_kubernetes_manifest_runs_commands_the_collector_takes(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yml").read_text()) if d]
    # Two deployments in one file, each applied alone by its label (the header says how).
    single = _selected(docs, "msgtally-single")
    distributed = _selected(docs, "msgtally-distributed")
    assert single == {("ConfigMap", "msgtally"), ("Deployment", "msgtally-ingest"),
                      ("Deployment", "msgtally-engine"), ("Service", "msgtally")}  # fmt: skip
    assert distributed == {
        ("ConfigMap", "msgtally"), ("Job", "msgtally-topic"),
        ("Deployment", "msgtally-collector"), ("Deployment", "msgtally-worker"),
        ("Service", "msgtally-collector"),
    }  # fmt: skip
    assert single | distributed == {(d["kind"], d["metadata"]["name"]) for d in docs}
    header = (DEPLOY / "kubernetes.yml").read_text().split("\napiVersion", 1)[0]
    assert "-l msgtally-single=yes" in header and "-l msgtally-distributed=yes" in header
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert by_name["msgtally-engine"]["spec"]["replicas"] == 1
    assert by_name["msgtally-ingest"]["spec"]["replicas"] > 1
    assert by_name["msgtally-collector"]["spec"]["replicas"] > 1
    assert by_name["msgtally-worker"]["spec"]["replicas"] > 1
    # The configuration file it mounts is one the collector reads.
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = tmp_path / "msgtally.yml"
    config.write_text(config_map["data"]["msgtally.yml"])
    read_config_file(str(config))
    with BackgroundServer(create_app(open_store(f"sqlite:///{tmp_path / 'store.db'}"))) as live:
        probe_status = {p: httpx.get(live.url + p).status_code for p in ("/healthz", "/readyz")}
    commands = {}
    logs = set()
    for name, container in _containers(docs):
        args = container["args"]
        assert args[0] == "msgtally"
        parsed = build_parser().parse_args(args[1:])
        commands[name] = parsed.command
        if parsed.command == "serve":
            assert ("--no-reconcile" in args) == (name == "msgtally-ingest")
            assert (parsed.log is not None) == (name == "msgtally-collector")
        if getattr(parsed, "log", None) is not None:
            logs.add(parse_log_url(parsed.log))
        for env in container.get("env", []):
            assert env["name"].removeprefix("MSGTALLY_").lower() in Settings.model_fields
        for probe in ("readinessProbe", "livenessProbe"):
            if parsed.command == "serve":
                assert probe_status[container[probe]["httpGet"]["path"]] == 200
            else:  # no HTTP: Kafka's group protocol watches a worker
                assert probe not in container
    assert commands == {
        "msgtally-ingest": "serve", "msgtally-engine": "serve", "msgtally-topic": "topic",
        "msgtally-collector": "serve", "msgtally-worker": "worker",
    }  # fmt: skip
    assert len(logs) == 1  # the Job, the collectors and the workers name one topic
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services["msgtally"]["spec"]["selector"] == {"app": "msgtally", "role": "ingest"}
    collector = {"app": "msgtally", "role": "collector"}
    assert services["msgtally-collector"]["spec"]["selector"] == collector


def _dockerfile_steps() -> dict[str, list[str]]:
    """The Dockerfile's instructions, continuation lines joined: name -> arguments."""
    steps: dict[str, list[str]] = {}
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            steps.setdefault(name, []).append(rest.strip())
    return steps


def test_the_image_runs_as_a_user_with_its_store_on_a_volume() -> None:
    steps = _dockerfile_steps()
    assert steps["USER"] == ["msgtally"]
    assert steps["EXPOSE"] == ["8410 4317"]
    assert steps["VOLUME"] == ["/var/lib/msgtally"]
    assert "/healthz" in steps["HEALTHCHECK"][0]
    db = read_config_file(str(DEPLOY / "msgtally.yml"))["db"]
    assert db.startswith("sqlite:////var/lib/msgtally/")  # the store is on the volume


@pytest.mark.slow
def test_the_dockerfile_steps_build_an_image_that_serves(tmp_path: Path) -> None:
    """No Docker engine here: the build stage's `pip wheel` and the final stage's
    `pip install` run in a fresh venv, then its CMD with its ENV, and its
    HEALTHCHECK command must pass against it."""
    steps = _dockerfile_steps()
    wheels = tmp_path / "wheels"
    wheel_step = next(r for r in steps["RUN"] if r.startswith("pip wheel"))
    subprocess.run(
        shlex.split(wheel_step.replace("/wheels", str(wheels))), cwd=ROOT, check=True,
        capture_output=True,
    )  # fmt: skip
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (wheel,) = wheels.glob("msgtally-*.whl")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[collector]"],
                   check=True)  # fmt: skip
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    for assignment in shlex.split(steps["ENV"][-1]):
        key, _, value = assignment.partition("=")
        env[key] = value
    env["MSGTALLY_CONFIG"] = str(DEPLOY / "msgtally.yml")  # copied to /etc/msgtally in the image
    port = free_port()
    env.update(MSGTALLY_DB=f"sqlite:///{tmp_path / 'store.db'}", MSGTALLY_PORT=str(port),
               MSGTALLY_OTLP_GRPC_PORT=str(free_port()))  # fmt: skip
    cmd = yaml.safe_load(steps["CMD"][-1])
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=out)
    try:
        check = shlex.split(steps["HEALTHCHECK"][0].split(" CMD ", 1)[1])
        check = [c.replace("8410", str(port)) for c in check]
        deadline = time.monotonic() + 60
        while subprocess.run(check, env=env).returncode != 0:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        server.terminate()
        server.wait(30)
