"""The options every batch command shares reach the runtime and the ledger as one dict."""

from __future__ import annotations

from pathlib import Path

from omi_batch.cli import cli
from omi_batch.ledger import Ledger

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_offboarding.csv"


def test_preview_records_the_options_it_ran_with_as_the_batch_options(
    runner, env, ledger_path, reports_dir
):
    done = runner.invoke(cli, [
        "preview", str(SAMPLE), "--no-check-agents", "--ledger", str(ledger_path), "--reports",
        str(reports_dir), "--concurrency", "3", "--rate", "50", "--timeout", "7", "--wait", "9",
        "--listen", "127.0.0.1:0",
    ])  # fmt: skip
    assert done.exit_code == 1, done.output  # row 8's agent has no OMI account: its preview fails
    batch = done.stdout.strip().splitlines()[-1]
    with Ledger(ledger_path) as ledger:
        options = ledger.batch(batch)["options"]
    assert options == {"command": "preview", "concurrency": 3, "rate": 50.0, "timeout": 7.0,
                       "wait": 9.0}  # fmt: skip


def test_simulator_serve_help_lists_every_knob_of_its_table(runner):
    from omi_batch.cli.options import SIMULATOR_FAULTS, SIMULATOR_KNOBS

    done = runner.invoke(cli, ["simulator", "serve", "--help"])
    assert done.exit_code == 0
    for decls, _ in SIMULATOR_KNOBS:
        assert decls[0].split("/")[0] in done.output
    names = {decls[0].split("/")[0].lstrip("-").replace("-", "_") for decls, _ in SIMULATOR_KNOBS}
    assert set(SIMULATOR_FAULTS) <= names
