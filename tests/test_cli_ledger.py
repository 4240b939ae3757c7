"""`omi-batch ledger verify` and `omi-batch ledger export`, as an auditor runs them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from helpers import transfer

from omi_batch.cli import cli
from omi_batch.ledger import Ledger

ROWS = [transfer(2, "an.nguyen@example.vn", "binh.tran@example.vn", note="Nguyễn Văn An")]


@pytest.fixture
def filled(ledger_path):
    """A ledger with one batch whose row went all the way to succeeded: (path, batch id)."""
    with Ledger(ledger_path) as led:
        batch_id = led.create_batch(
            source_file="departures.csv",
            source_sha256="cd" * 32,
            created_by="hr-admin",
            base_url="https://public-v1-stg.omicall.com",
            options={},
            input_rows=1,
            warnings=[],
            rows=ROWS,
        )
        led.record_step(
            batch_id, 2, state="previewed", event="previewed", conversations_previewed=3
        )
        led.approve(batch_id, approve=[2], by="hr-admin", how="all")
        led.record_step(batch_id, 2, state="submitted", event="submitted", request_id="req-1")
        body = {"requestId": "req-1", "status": "SUCCESS", "payload": {"updatedRecords": 3}}
        led.receive_callback(
            batch_id=batch_id,
            row=2,
            phase="execute",
            raw_body=json.dumps(body).encode(),
            headers={"X-Omi-Batch-Token": "t0k3n-value-for-test"},
            remote="127.0.0.1",
            body=body,
        )
        head = led.head()
    return ledger_path, batch_id, head


def verify(runner, path):
    return runner.invoke(cli, ["ledger", "verify", "--ledger", str(path)])


def test_verify_an_intact_ledger(runner, filled):
    path, _, head = filled
    result = verify(runner, path)
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        f"Ledger intact: 5 events, head {head[:16]}\n",
        "",
    )


def test_verify_reads_the_ledger_from_the_environment(runner, filled):
    path, _, head = filled
    result = runner.invoke(cli, ["ledger", "verify"], env={"OMI_BATCH_LEDGER": str(path)})
    assert (result.exit_code, result.stdout) == (0, f"Ledger intact: 5 events, head {head[:16]}\n")


@pytest.mark.parametrize("tamper, said", [
    ("""UPDATE events SET data = '{"to":"succeeded"}' WHERE id = 3""",
     "Ledger tampered: event 3 was edited (its hash does not match its content)\n"),
    ("DELETE FROM events WHERE id >= 4",
     "Ledger tampered: the chain was cut after event 3 (the head file names event 5)\n"),
], ids=["an edited event", "a cut tail"])  # fmt: skip
def test_verify_names_what_was_tampered_with_and_exits_1(runner, filled, tamper, said):
    path, _, _ = filled
    conn = sqlite3.connect(path)
    conn.execute(tamper)
    conn.commit()
    conn.close()

    result = verify(runner, path)

    assert (result.exit_code, result.stdout) == (1, said)


def test_verify_warns_on_stderr_when_the_head_file_is_missing(runner, filled):
    path, _, head = filled
    (path.parent / "ledger.db.head").unlink()
    result = verify(runner, path)
    assert result.exit_code == 0
    assert result.stdout == f"Ledger intact: 5 events, head {head[:16]}\n"
    assert result.stderr == (
        "Warning: no head file ledger.db.head: a cut at the end of the chain cannot be detected\n"
    )


def test_verify_an_empty_ledger(runner, ledger_path):
    Ledger(ledger_path).close()
    result = verify(runner, ledger_path)
    assert (result.exit_code, result.stdout) == (0, "Ledger intact: 0 events, head none\n")


@pytest.mark.parametrize("command", [["verify"], ["export", "20261125-093000-ab12"]])
def test_a_missing_ledger_is_exit_2_and_is_not_created(runner, tmp_path, command):
    path = tmp_path / "nowhere" / "ledger.db"
    result = runner.invoke(cli, ["ledger", *command, "--ledger", str(path)])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"Error: no ledger at {path}\n"
    assert not path.parent.exists()


def test_export_prints_the_batch_trail_as_json_lines(runner, filled):
    path, batch_id, _ = filled
    result = runner.invoke(cli, ["ledger", "export", batch_id, "--ledger", str(path)])

    assert result.exit_code == 0, result.output
    items = [json.loads(line) for line in result.stdout.splitlines()]
    assert [i["type"] for i in items] == ["batch", "row", "approval", "callback"] + ["event"] * 5
    assert items[1]["note"] == "Nguyễn Văn An"
    assert "Nguyễn Văn An" in result.stdout  # UTF-8 kept, not \\u-escaped
    assert items[3]["verdict"] == "applied"
    assert items[3]["headers"] == {}
    assert "t0k3n-value-for-test" not in result.stdout
    assert [i["kind"] for i in items[4:]] == [
        "batch_created",
        "previewed",
        "approved",
        "submitted",
        "callback_applied",
    ]


def test_export_of_an_unknown_batch_is_exit_2(runner, filled):
    path, _, _ = filled
    result = runner.invoke(cli, ["ledger", "export", "20990101-000000-0000", "--ledger", str(path)])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"Error: no batch 20990101-000000-0000 in {path}\n"


@pytest.mark.parametrize("command", ["verify", "export"])
def test_ledger_commands_have_help_with_an_example(runner, command):
    result = runner.invoke(cli, ["ledger", command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert "--ledger" in result.stdout


def test_verify_as_a_real_command(filled):
    path, _, head = filled
    done = subprocess.run(
        [sys.executable, "-m", "omi_batch", "ledger", "verify", "--ledger", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"Ledger intact: 5 events, head {head[:16]}\n",
        "",
    )


def test_status_json_says_which_rows_need_review_and_why(runner, ledger_path):
    from helpers import make_batch

    with Ledger(ledger_path) as ledger:
        batch = make_batch(ledger, rows=2)
        ledger.record_step(batch, 2, state="succeeded", event="t", expect=["submitted"],
                           updated_records=4, verified_by="callback")  # fmt: skip
        ledger.update_row(batch, 2, event="t", needs_review=1, error=None)
    result = runner.invoke(cli, ["status", batch, "--json", "--ledger", str(ledger_path)])
    assert result.exit_code == 0, result.output
    rows = {r["row"]: r for r in json.loads(result.stdout)["rows"]}
    assert (rows[2]["needs_review"], rows[2]["error"]) == (
        True,
        "needs review: conflicting callbacks",
    )
    assert "needs_review" not in rows[3] and "error" not in rows[3]
