"""How msgtally sits in a service's environment: light to import, no name clashes.

Each check runs a fresh interpreter, outside the repository, as a service would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

# What the collector needs and a service reporting its ids must never pay for.
COLLECTOR_ONLY = (
    "sqlalchemy",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "psycopg",
    "yaml",
    "grafana_foundation_sdk",
    "grpc",
    "google",  # protobuf
)
SERVICE_PACKAGES = ("ingest", "alerts", "slis", "reconcile", "dashboards")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "checkout.yml"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_the_plain_install_requires_only_what_the_shim_needs() -> None:
    plain = sorted(
        r.split(">")[0].split("=")[0].split("[")[0].strip()
        for r in requires("msgtally") or ()
        if "extra ==" not in r
    )
    assert plain == ["httpx", "opentelemetry-api", "prometheus-client"]


def test_importing_the_shim_loads_nothing_of_the_collector(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from msgtally import Tally\n"
        "import msgtally.ingest.shim.tally, msgtally.ingest.shim.shipper\n"
        "import msgtally.ingest.shim.tracing, msgtally.ingest.shim.wire\n"
        "t = Tally('orders', tracing=True)\n"
        "t.produced('m1'); t.close(timeout=0.1)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout)
    loaded = {name.split(".")[0] for name in modules}
    assert loaded.isdisjoint(COLLECTOR_ONLY), sorted(loaded & set(COLLECTOR_ONLY))
    assert "msgtally" in loaded
    ours = {m for m in modules if m.startswith("msgtally.")}
    assert ours <= {"msgtally.ingest", "msgtally.record"} | {
        m for m in ours if m.startswith("msgtally.ingest.shim")
    }, sorted(ours)


def test_a_service_with_its_own_ingest_and_alerts_packages_can_use_msgtally(
    tmp_path: Path,
) -> None:
    # A data pipeline with top-level packages named like msgtally's folders.
    for name in SERVICE_PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'service:{name}'\n")
    code = (
        "import ingest, alerts, slis, reconcile, dashboards\n"
        "from msgtally.ingest.shim.tally import Tally\n"
        "from msgtally.ingest.shim.adapters import rabbitmq\n"
        "from msgtally.app import create_app\n"
        "from msgtally.alerts.rules import generate\n"
        "import msgtally.slis, msgtally.reconcile, msgtally.dashboards\n"
        "print(ingest.OWNER, alerts.OWNER, slis.OWNER, reconcile.OWNER, dashboards.OWNER)\n"
        "print(Tally.__module__, create_app.__module__, generate.__module__)\n"
    )
    proc = _python(code, tmp_path)  # the service's own folder comes first on sys.path
    assert proc.returncode == 0, proc.stderr
    theirs, ours = proc.stdout.splitlines()
    assert theirs.split() == [f"service:{n}" for n in SERVICE_PACKAGES]
    assert ours.split() == ["msgtally.ingest.shim.tally", "msgtally.app", "msgtally.alerts.rules"]


def test_generating_rules_and_dashboards_never_imports_the_store(tmp_path: Path) -> None:
    # What `msgtally[slo]` installs must be enough: check, alerts and dashboards.
    code = (
        "import sys, json\n"
        "from msgtally.slis.spec.load import load_spec\n"
        "from msgtally.alerts.rules import generate\n"
        "from msgtally.alerts.promtests import generate_tests\n"
        "from msgtally.alerts.render import render_rules\n"
        "from msgtally.dashboards.build import generate as boards\n"
        "import msgtally.slo_commands\n"
        "spec = load_spec('version: msgtally/v1\\nservice: s\\nslos:\\n"
        "  - {name: d, stream: orders, sli: delivery, objective: 99.9}\\n')\n"
        "render_rules(generate(spec), 's'); generate_tests(spec, 'rules.yml'); boards(spec)\n"
        "from msgtally.cli import main\n"
        f"assert main(['check', {str(EXAMPLE)!r}]) == 0\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = {name.split(".")[0] for name in json.loads(proc.stdout.splitlines()[-1])}
    store = {"sqlalchemy", "psycopg", "fastapi", "starlette", "uvicorn", "msgspec", "pydantic"}
    assert loaded.isdisjoint(store), sorted(loaded & store)
