"""A row whose scope asks for tickets is refused by preview and run before anything is sent:
they move conversations only so far, and a tickets row must never end `succeeded` after a
conversation transfer (issue 15)."""

from __future__ import annotations

import json

import pytest

from omi_batch.cli import cli


def departures(tmp_path, scope: str):
    path = tmp_path / "departures.csv"
    path.write_text(
        "source_email,target_email,scope\n"
        "lan.nguyen@example.vn,hong.le@example.vn,conversations\n"
        f"bao.pham@example.vn,anh.vu@example.vn,{scope}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("command", ["preview", "run"])
@pytest.mark.parametrize("scope", ["tickets", "both"])
def test_preview_or_run_of_a_tickets_row_exits_2_and_sends_nothing(
    runner, env, tmp_path, ledger_path, reports_dir, command, scope
):
    sim, _server = env
    args = [command, str(departures(tmp_path, scope)), "--ledger", str(ledger_path),
            "--reports", str(reports_dir)] + (["--yes"] if command == "run" else [])  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "1 row(s) ask to move tickets, which omi-batch cannot do yet: nothing was sent" in (
        result.output
    )
    assert (
        f"row 3: scope_not_supported: scope is {scope}: preview and execute move conversations"
        in (result.output)
    )
    assert not [e for e in sim.events if e["kind"] == "request"]
    if ledger_path.exists():  # the ledger may be opened first, but no batch is created
        status = runner.invoke(cli, ["status", "--ledger", str(ledger_path), "--json"])
        assert json.loads(status.output) == {"batches": []}
    assert list(reports_dir.iterdir()) == []


def test_validate_still_reads_the_scope(runner, tmp_path):
    result = runner.invoke(cli, ["validate", str(departures(tmp_path, "both"))])
    assert result.exit_code == 0, result.output
