"""The shape of `omi-batch execute`: from the command to the first request in a few frames."""

from __future__ import annotations

import traceback
from pathlib import Path

import requests

from omi_batch.cli import cli

PACKAGE = Path(__file__).resolve().parent.parent / "omi_batch"
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_offboarding.csv"


def our_frames(stack: list[traceback.FrameSummary]) -> list[str]:
    """``module:function`` of each frame in omi_batch, outermost first."""
    found = []
    for frame in stack:
        path = Path(frame.filename).resolve()
        if PACKAGE in path.parents:
            module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            found.append(f"{module}:{frame.name}")
    return found


def test_execute_reaches_its_first_request_in_five_frames_entering_cli_once(
    runner, env, ledger_path, reports_dir, monkeypatch
):
    common = ["--ledger", str(ledger_path), "--reports", str(reports_dir)]
    # The sample's row 8 has no OMI account: without the directory check it just fails its preview.
    done = runner.invoke(cli, ["preview", str(SAMPLE), "--no-check-agents", *common, "--listen",
                               "127.0.0.1:0"])  # fmt: skip
    assert done.exit_code in (0, 1), done.output
    batch = done.stdout.strip().splitlines()[-1]
    approved = runner.invoke(cli, ["approve", batch, "--all", "--ledger", str(ledger_path)])
    assert approved.exit_code == 0, approved.output
    stacks: list[list[str]] = []
    send = requests.Session.send

    def record(self, request, **kwargs):  # requests is not our code: we only look at the stack
        stacks.append(our_frames(traceback.extract_stack()))
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", record)
    done = runner.invoke(cli, ["execute", batch, "--yes", *common, "--listen", "127.0.0.1:0"])
    assert done.exit_code in (0, 1), done.output
    first = stacks[0]
    start = next(i for i, f in enumerate(first) if f.startswith("omi_batch.cli.batch:"))
    end = next(i for i, f in enumerate(first) if f.startswith("omi_batch.client."))
    path = first[start : end + 1]
    assert path == [
        "omi_batch.cli.batch:execute",
        "omi_batch.pipeline.execute:execute",
        "omi_batch.pipeline.execute:_execute",
        "omi_batch.pipeline.preview:preflight",
        "omi_batch.client.endpoints:transfer_conversations",
    ]
    # Above the command only the root group's error handler (once, for every command).
    assert [f for f in first[:start] if f.startswith("omi_batch.")] == [
        "omi_batch.cli.output:invoke"
    ]
