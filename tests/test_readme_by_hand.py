"""The README's "by hand" session is copy-paste true (issue #10, item 11): the files it names
exist, `omi-batch` is on the PATH the way it says, every option it types is one the command
takes, and every command that needs a webhook receiver has one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from omi_batch.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
NEEDS_RECEIVER = ("preview", "execute", "run", "reconcile")


def by_hand_commands() -> list[str]:
    """The `$ ` lines of the console block that follows "The same steps by hand"."""
    start = README.index("The same steps by hand")
    block = re.search(r"```console\n(.*?)```", README[start:], re.S)
    assert block, "no console block after 'The same steps by hand'"
    return [line[2:] for line in block.group(1).splitlines() if line.startswith("$ ")]


def command_of(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command a word list names (``omi-batch ledger verify …``) and its arguments."""
    command: click.Command = cli
    rest = words[1:]
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def test_the_by_hand_session_puts_omi_batch_on_the_path_first():
    commands = by_hand_commands()
    first_use = next(i for i, c in enumerate(commands) if "omi-batch" in c)
    assert any(". .venv/bin/activate" in c for c in commands[: first_use + 1]) or all(
        ".venv/bin/omi-batch" in c for c in commands if "omi-batch" in c
    ), commands[: first_use + 1]


def test_the_by_hand_session_reads_files_that_exist():
    commands = by_hand_commands()
    named = [w for c in commands for w in shlex.split(c, comments=True)
             if w.endswith((".csv", ".xlsx")) and "data/reports/" not in w]  # fmt: skip
    assert named, "the session reads no input file"
    for word in named:
        assert (ROOT / word).exists(), f"the README names {word}, which is not in the repository"


def test_every_option_the_by_hand_session_types_exists():
    for line in by_hand_commands():
        words = shlex.split(line, comments=True)
        if not words or Path(words[0]).name != "omi-batch":
            continue
        command, rest = command_of(words)
        known = {name for p in command.params for name in getattr(p, "opts", [])}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{line}: {command.name} has no {word}"


def test_every_by_hand_command_that_waits_for_callbacks_has_a_receiver():
    commands = by_hand_commands()
    if any("OMI_WEBHOOK_URL=" in c for c in commands):
        return
    for line in commands:
        words = shlex.split(line, comments=True)
        if words and Path(words[0]).name == "omi-batch" and words[1] in NEEDS_RECEIVER:
            assert "--listen" in words, f"{line}: without --listen its rows end unconfirmed"


def test_the_by_hand_session_talks_to_the_simulator_it_starts():
    start = README.index("The same steps by hand")
    serve = re.search(r"simulator serve --port (\d+) --api-key (\S+?)`", README[start:])
    assert serve, "the session does not say how to start the simulator"
    exports = " ".join(c for c in by_hand_commands() if c.startswith("export "))
    assert f"OMI_BASE_URL=http://127.0.0.1:{serve.group(1)}" in exports
    assert f"OMI_API_KEY={serve.group(2)}" in exports
