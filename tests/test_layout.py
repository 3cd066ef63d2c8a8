"""The structure holds: only `distill/tasks/` knows a task by its name, and arrows point one way
(`nas` -> `distill` -> `search_spaces`)."""

import ast
from pathlib import Path

from distill.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "distill", "search_spaces")


def _sources(package):
    return sorted((ROOT / package).rglob("*.py"))


def test_no_code_outside_the_task_modules_names_a_task():
    for package in PACKAGES:
        for path in _sources(package):
            if path.is_relative_to(ROOT / "distill" / "tasks"):
                continue
            strings = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}
            assert not strings & set(TASKS), f"{path.relative_to(ROOT)} names a task: {strings & set(TASKS)}"


def test_imports_point_one_way():
    below = {"nas": set(), "distill": {"nas"}, "search_spaces": {"nas", "distill"}}
    for package, forbidden in below.items():
        for path in _sources(package):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for name in names:
                    assert name.split(".")[0] not in forbidden, f"{path.relative_to(ROOT)} imports {name}"
