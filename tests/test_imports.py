"""Every module imports alone, in a fresh interpreter (no import cycle depends on an order), and
the light commands stay light: neither pandas nor sqlite_utils for `--help` or `status`."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import omi_batch

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
