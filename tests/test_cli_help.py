"""Every command has help with an example, and asking for help stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from omi_batch.cli import cli

HEAVY = ("pandas", "sqlite_utils", "requests", "tenacity", "waitress", "rich", "openpyxl", "numpy")


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from all_commands(command, path)


COMMANDS = list(all_commands(cli))


def test_every_command_is_listed():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {
        "validate", "preview", "approve", "execute", "run", "reconcile", "status", "report",
        "webhook serve", "ledger verify", "ledger export", "simulator serve", "job run",
    } <= names  # fmt: skip


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help_and_an_example(runner, path, command):
    result = runner.invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert command.help, f"{' '.join(path)} has no help"
    assert "Example:" in result.output  # a group too: how its commands are called
    assert "omi-batch " + " ".join(path) in result.output
    if not isinstance(command, click.Group):
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"]])
def test_help_imports_no_heavy_library(args):
    code = (
        "import sys, json\n"
        "from omi_batch.cli import cli\n"
        f"try:\n    cli({args!r}, prog_name='omi-batch')\n"
        "except SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run([sys.executable, "-m", "omi_batch", "--help"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert done.stdout.startswith("Usage: omi-batch")


def test_verbose_is_taken_after_the_command_too(runner, tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("source_email,target_email\na@x.vn,b@x.vn\n")
    result = runner.invoke(cli, ["validate", str(csv_file), "-v"])
    assert result.exit_code == 0, result.output
