"""The package's import graph, read statically (AST): no circles, and models know nothing of tasks.

An edge A -> B is an ``import`` or ``from ... import`` in A that names module B (for
``from package import name``: the submodule ``package.name`` where one exists, else the package),
at module level or inside a function; the parent packages that Python initialises on the way are
not edges. Imports under ``if TYPE_CHECKING:`` never run and are left out. Loading a family
by name (``configs.FAMILIES``, ``importlib.import_module``) is not an import statement and is not an
edge: that is the config edge's one look-up by kind.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "synthloop"
ML_FRAMEWORKS = ("torch", "diffusers", "transformers", "peft", "trl", "accelerate", "datasets", "sklearn",
                 "tensorflow", "jax")


def module_name(path: Path) -> str:
    parts = ["synthloop", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:  # the else branch does run
                yield from _import_nodes(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _import_nodes(child)


def _base(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - node.level + 1]
    return ".".join([*anchor, node.module] if node.module else anchor)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The synthloop modules that module ``name`` imports (see the module docstring)."""
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = _base(node, name, path.name == "__init__.py")
        for alias in node.names:
            found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in found if target in known and target != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_real_import_statements() -> None:
    graph = import_graph()
    assert "synthloop.configs" in graph["synthloop.families.digits"]  # module level
    assert "synthloop.models.diffusion" in graph["synthloop.families.digits"]  # inside functions
    assert "synthloop.loop" in graph["synthloop.families.gaussian"]  # inside build
    assert "synthloop.models.hf" in graph["synthloop.models.scratch"]
    # under TYPE_CHECKING only: not an edge
    assert "synthloop.models.diffusion" in graph["synthloop.tasks.digits"]  # evaluate() imports it
    assert "synthloop.loop" not in graph["synthloop.tasks.digits"]


def test_find_cycle_finds_a_circle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_resolve(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from . import records\nfrom .models import hf\nfrom .budget import Planner\n")
    known = {"synthloop", "synthloop.records", "synthloop.models", "synthloop.models.hf", "synthloop.budget"}
    assert imports_of("synthloop.loop", module, known) == {"synthloop.records", "synthloop.models.hf",
                                                           "synthloop.budget"}


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("layer", ["synthloop.tasks", "synthloop.families"])
def test_models_import_nothing_from_tasks_or_families(layer: str) -> None:
    graph = import_graph()
    bad = {name: sorted(t for t in targets if t == layer or t.startswith(layer + "."))
           for name, targets in graph.items() if name.startswith("synthloop.models")}
    assert not {name: targets for name, targets in bad.items() if targets}


# The real CLI in a fresh interpreter, then the top-level packages it left in sys.modules.
PLAN_AND_LIST_MODULES = """
import json, sys
from synthloop.cli import app
try:
    app(["plan", sys.argv[1]])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_plan_imports_no_ml_framework(example: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", PLAN_AND_LIST_MODULES, str(ROOT / "examples" / example)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and "iterations; plan uses" in out.stdout
    assert "synthloop" in report["modules"]
    assert [name for name in ML_FRAMEWORKS if name in report["modules"]] == []


def test_no_function_in_the_package_is_over_50_lines() -> None:
    """A long function is a stage hiding inside another (STYLE.md): keep every one to a screenful."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > 50:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_the_loop_reads_in_one_sitting() -> None:
    assert len((PACKAGE / "loop.py").read_text().splitlines()) <= 200
