"""The floors of ARCHITECTURE.md hold: no package imports one above it, no module imports in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nexus_ray"

# Bottom to top: a module imports only from its own floor and the floors below (ARCHITECTURE.md).
FLOORS: dict[str, int] = {
    "": 0,  # nexus_ray/__init__.py
    "config": 0,
    "cluster": 0,
    "ray_reaper": 0,
    "tasks": 1,
    "zoo": 1,
    "rope": 2,
    "merge": 2,
    "engines": 3,
    "search": 4,
    "tuning": 4,
    "planner": 5,
    "peers": 5,
    "serving": 6,
    "jobs": 7,
    "training": 7,
    "demo": 7,
    "cli": 8,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every nexus_ray module a file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nexus_ray"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nexus_ray"))
    return out


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


MODULES = _modules()
GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_every_package_has_a_floor():
    packages = {_package(m) for m in MODULES}
    assert packages <= set(FLOORS), f"add {sorted(packages - set(FLOORS))} to FLOORS (and ARCHITECTURE.md)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_floor_above_it(module):
    floor = FLOORS[_package(module)]
    upward = sorted(i for i in GRAPH[module] if FLOORS[_package(i)] > floor)
    assert not upward, f"{module} imports {upward} from above its floor"


def test_no_import_cycle():
    """Depth-first search over module imports (package ``__init__`` re-exports included)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
