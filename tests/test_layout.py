"""The structure holds: only `distill/tasks/` knows a task by its name, and arrows point one way
(`nas` -> `distill` -> `search_spaces`)."""

import ast
import re
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


PRIVATE = (r"\._storage\b", r"\._study_id\b", r"\._get_trials\b", r"\._ot_trials\b", r"\boptuna\._", r"\bray\._private\b")
"""private APIs of Optuna and Ray: used in `nas/_compat.py` only, each tested there"""


def test_private_apis_of_optuna_and_ray_live_in_one_module():
    for package in PACKAGES:
        for path in _sources(package):
            if path == ROOT / "nas" / "_compat.py":
                continue
            lines = path.read_text().splitlines()
            imports = [line for line in lines if line.lstrip().startswith(("from ", "import "))]
            text = "\n".join(line for line in lines if line not in imports)  # our own private modules are fine
            used = [p for p in PRIVATE if re.search(p, text)]
            used += [line.strip() for line in imports if re.search(r"\b(optuna|ray)\._", line)]
            assert not used, f"{path.relative_to(ROOT)} uses {used}: put it in nas/_compat.py with a test"


def test_each_stored_key_is_spelled_once():
    """Every key of a stored trial or study (`nas/study/_record.py`, the cache's in
    `distill/cache.py`) appears as a string in one place: callers use its name."""
    from distill import cache
    from nas.study import _record

    keys = {
        value
        for module in (_record, cache)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and value.isidentifier() and "_" in value
    }
    assert {"duplicate_of", "fail_reason", "teacher_metrics", "pruned_at", "not_trained"} <= keys
    for package in PACKAGES:
        for path in _sources(package):
            tree = ast.parse(path.read_text())
            exported = {id(n) for node in ast.walk(tree) if isinstance(node, ast.Assign) for n in ast.walk(node.value)
                        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)}  # fmt: skip
            strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in exported]
            for key in keys & set(strings):
                defined = path in (ROOT / "nas" / "study" / "_record.py", ROOT / "distill" / "cache.py")
                assert defined and strings.count(key) == 1, f"{path.relative_to(ROOT)} spells the stored key {key!r}"


def test_functions_read_in_one_screen():
    """No function outside the tests is longer than 80 lines."""
    for package in (*PACKAGES, "benchmarks"):
        for path in _sources(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    assert length <= 80, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {length} lines"


def test_a_task_is_never_probed_for_what_it_has():
    """`Task` gives every optional part a default: nothing asks a task with hasattr or getattr."""
    for package in PACKAGES:
        for path in _sources(package):
            probes = re.findall(r"\b(?:hasattr|getattr)\((?:self\.)?task\b", path.read_text())
            assert not probes, f"{path.relative_to(ROOT)} probes a task: {probes}"


def test_the_benchmarks_import_what_exists():
    """Nothing runs the benchmarks in CI: what they import from the packages is checked here."""
    import importlib

    for path in _sources("benchmarks"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{path.relative_to(ROOT)} imports {missing} from {node.module}"
