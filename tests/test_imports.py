"""Every module imports alone, in a fresh interpreter (no import cycle depends on an order), no
module imports one that imports it, and the light commands stay light: neither pandas nor
sqlite_utils for `--help` or `status`."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import omi_batch

PACKAGE = Path(omi_batch.__file__).resolve().parent
MODULES = sorted(
    ["omi_batch"] + [m.name for m in pkgutil.walk_packages(omi_batch.__path__, "omi_batch.")]
)
HEAVY = {"pandas", "sqlite_utils"}


def loaded_by(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running ``code``."""
    script = (
        "import sys, json\n"
        f"{code}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module):
    assert "omi_batch" in loaded_by(f"import {module}")


@pytest.mark.parametrize(
    "module", ["omi_batch.cli", "omi_batch.jobs", "omi_batch.ledger", "omi_batch.states",
               "omi_batch.verdicts", "omi_batch.session"],
)  # fmt: skip
def test_light_modules_load_neither_pandas_nor_sqlite_utils(module):
    assert not loaded_by(f"import {module}") & HEAVY


def run_cli(args: list[str]) -> str:
    return (
        "from omi_batch.cli import cli\n"
        f"try:\n    cli({args!r}, prog_name='omi-batch')\n"
        "except SystemExit:\n    pass"
    )


def test_help_and_status_load_neither_pandas_nor_sqlite_utils(tmp_path):
    from omi_batch.ledger import Ledger

    ledger = tmp_path / "ledger.db"
    Ledger(ledger).close()
    for args in (["--help"], ["status", "--ledger", str(ledger)], ["status", "--json",
                 "--ledger", str(ledger)]):  # fmt: skip
        assert not loaded_by(run_cli(args)) & HEAVY, args


def test_validate_loads_no_sqlite_utils():
    sample = Path(__file__).resolve().parent.parent / "data" / "sample_offboarding.csv"
    assert "sqlite_utils" not in loaded_by(run_cli(["validate", str(sample)]))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the package's modules its source imports, wherever the import stands (in a
    function or under TYPE_CHECKING too), plus the packages such an import runs first."""
    files = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        named = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                named.update(f"{base}.{alias.name}" for alias in node.names)
                named.add(base)
        graph[name] = set()
        for target in named:
            while target and target not in files:
                target = target.rpartition(".")[0]
            while target and not (name == target or name.startswith(f"{target}.")):
                graph[name].add(target)  # importing a.b.c runs a.b first, unless inside it
                target = target.rpartition(".")[0]
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import one another, directly or through others."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reached = {name: reach(name) for name in graph}
    circles = {
        frozenset(w for w in reached[v] if v in reached[w]) for v in graph if v in reached[v]
    }
    return sorted(sorted(c) for c in circles)


def test_no_module_imports_one_that_imports_it():
    assert import_circles(import_graph(PACKAGE.parent, "omi_batch")) == []


def test_the_circle_check_sees_a_circle_through_a_package_import(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "rules.py").write_text("def f():\n    from pkg.sub.errors import E\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from .reader import r\n")
    (tmp_path / "pkg" / "sub" / "errors.py").write_text("class E(Exception): ...\n")
    (tmp_path / "pkg" / "sub" / "reader.py").write_text("from pkg import rules\n")
    assert import_circles(import_graph(tmp_path, "pkg")) == [
        ["pkg.rules", "pkg.sub", "pkg.sub.reader"]
    ]
