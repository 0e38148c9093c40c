"""House rules of the code's layout: the layers point one way, modules stay readable, and a
task's name never repeats the library's."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _top_level_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not n.name.startswith("_")
    }


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules("planet", "tasks", "flows")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_layers_point_one_way():
    """planet/ imports neither Prefect nor tasks/ nor flows/; tasks/ never imports flows/."""
    for path in _modules("planet"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("prefect", "tasks", "flows")}
        assert not bad, (path, bad)
    for path in _modules("tasks"):
        assert not {m for m in _imports(path) if m.split(".")[0] == "flows"}, path


def test_no_function_name_is_both_a_task_and_a_library_function():
    library = set().union(*(_top_level_functions(p) for p in _modules("planet")))
    shared = {
        (str(p.relative_to(ROOT)), name)
        for p in _modules("tasks")
        for name in _top_level_functions(p) & library
    }
    assert shared == set()
