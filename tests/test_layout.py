"""The map of docs/layout.md, held: which part may import which, the public
surface of every package, and packages that load nothing when imported."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import msgtally

ROOT = Path(__file__).resolve().parents[1]
# The parts, most specific prefix first, and what each may import (docs/layout.md).
PARTS = (
    ("msgtally.names", "names"),
    ("msgtally.record", "record"),
    ("msgtally.store", "store"),
    ("msgtally.ingest.shim", "shim"),
    ("msgtally.ingest.intake", "intake"),
    ("msgtally.reconcile", "reconcile"),
    ("msgtally.slis.spec", "spec"),
    ("msgtally.slis.read", "read"),
    ("msgtally.alerts", "alerts"),
    ("msgtally.dashboards", "dashboards"),
    ("msgtally", "app"),
)
ALLOWED = {
    "names": set(),
    "record": set(),
    "store": {"names"},
    "shim": {"record"},  # a service installs the shim alone: nothing of the collector
    "intake": {"names", "record", "store", "shim"},
    "reconcile": {"names", "store"},
    "spec": {"names"},  # check, alerts and dashboards need no store
    "read": {"names", "record", "store", "intake", "spec"},
    "alerts": {"names", "spec"},
    "dashboards": {"names", "spec", "alerts"},
    "app": {p for _, p in PARTS} - {"app"},
}
SOURCE_DIRS = ("msgtally", "ingest", "reconcile", "slis", "alerts", "dashboards")
LINKS = ("ingest", "reconcile", "slis", "alerts", "dashboards")  # msgtally/<part> -> ../<part>


def part_of(module: str) -> str | None:
    for prefix, part in PARTS:
        if module == prefix or module.startswith(prefix + "."):
            return part
    return None


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "msgtally":
        parts.insert(0, "msgtally")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> Iterator[Path]:
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            inner = path.relative_to(ROOT / top).parts
            if top == "msgtally" and inner[0] in LINKS:
                continue  # the same files again, through the links
            yield path


def imports_of(path: Path) -> Iterator[str]:
    """Every msgtally module a file imports, at the top or inside a function."""
    module = module_of(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        yield from (n for n in names if n.startswith("msgtally"))


def edges() -> dict[tuple[str, str], str]:
    """(from part, to part) -> one import that makes it."""
    found: dict[tuple[str, str], str] = {}
    for path in sources():
        src = part_of(module_of(path))
        for target in imports_of(path):
            dst = part_of(target)
            assert src is not None and dst is not None, (path, target)
            if dst != src:
                found.setdefault((src, dst), f"{module_of(path)} imports {target}")
    return found


def test_every_import_goes_the_way_the_map_says() -> None:
    wrong = {k: v for k, v in edges().items() if k[1] not in ALLOWED[k[0]]}
    assert not wrong, wrong


def test_no_cycle_between_parts() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst in edges():
        graph.setdefault(src, set()).add(dst)
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path, node))
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))
        done.add(node)

    for node in list(graph):
        visit(node, ())


def packages() -> list[str]:
    found = ["msgtally"]
    for info in pkgutil.walk_packages(msgtally.__path__, "msgtally."):
        if info.ispkg:
            found.append(info.name)
    return found


def submodules(package: str) -> set[str]:
    path = importlib.import_module(package).__path__
    return {info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_")}


@pytest.mark.parametrize("package", packages())
def test_every_package_states_its_public_surface(package: str) -> None:
    """`__all__` names every public module of the package, each exactly once,
    and every name in it resolves. The root is the exception: its `__all__` is
    what a service imports (`from msgtally import *` must not load the
    collector), and its modules are the command line and the app's assembly."""
    module = importlib.import_module(package)
    names = module.__all__
    assert len(names) == len(set(names))
    if package == "msgtally":
        assert set(names) == {"Tally", "__version__"}
    else:
        assert submodules(package) <= set(names)
    for name in names:
        assert name in submodules(package) or hasattr(module, name)


def test_importing_a_package_loads_none_of_its_modules(tmp_path: Path) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {packages()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('msgtally'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    assert loaded == set(packages()), sorted(loaded - set(packages()))
