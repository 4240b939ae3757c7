"""Honesty and safety fixes from the code review (issue 5, with #2 and #4): a callback token
echoed by OMI never lands anywhere; an attempt that may have reached OMI is never forgotten; a
stale ERROR never fails a resubmitted row; conflicting callbacks are shown; preflight attempts
are audited; one process at a time executes a batch; approvals from a regenerated report; a job
runs held rows once what held them succeeded. Real loopback HTTP, real SQLite files."""

from __future__ import annotations

import contextlib
import csv
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import API_KEY, WEBHOOK_SECRET, execute_requests, make_job

from omi_batch import callbacks
from omi_batch.cli import cli
from omi_batch.client import AuthError, RetryPolicy
from omi_batch.config import Secret
from omi_batch.jobs import run_tick
from omi_batch.ledger import Ledger
from omi_batch.reports import write_result_reports
from omi_batch.roster import read_plan
from omi_batch.simulator.app import envelope

ONE_ROW = "source_email,target_email\nlan.nguyen@example.vn,tuan.ho@example.vn\n"
TWO_OF_BAO = (
    "source_email,target_email,replace_existing_members,conv_ids\n"
    "bao.pham@example.vn,mai.hoang@example.vn,true,6a92a56ca95c2c0b07465834;6ac43424980ae047cc1ebe17\n"
    "bao.pham@example.vn,anh.vu@example.vn,false,\n"
)
ONE_TRY_THEN_ONE = RetryPolicy(max_attempts=2, base=0.0, max_wait=0.0, max_total=20)


def invoke(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def opts(ledger_path, reports_dir, wait="5"):
    return ["--ledger", ledger_path, "--reports", reports_dir, "--rate", "1000",
            "--concurrency", "1", "--listen", "127.0.0.1:0", "--wait", wait]  # fmt: skip


def write(tmp_path, text, name="departures.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def previewed_batch(runner, tmp_path, ledger_path, reports_dir, text=ONE_ROW) -> str:
    result = invoke(runner, "preview", write(tmp_path, text), *opts(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def approved_one_row(runner, tmp_path, ledger_path, reports_dir) -> str:
    """A batch of ONE_ROW previewed and approved (``approve --all``) through the commands."""
    batch_id = previewed_batch(runner, tmp_path, ledger_path, reports_dir)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    return batch_id


def executed_one_row(runner, tmp_path, ledger_path, reports_dir) -> str:
    """The same, then executed (exit 0)."""
    batch_id = approved_one_row(runner, tmp_path, ledger_path, reports_dir)
    result = invoke(runner, "execute", batch_id, "--yes", *opts(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    return batch_id


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"))))


def ok_preview(count: int = 1) -> dict:
    return {"status": 200, "body": envelope({"updatedRecords": count})}


# --------------------------------------------------------------------------- 1. token leak


def test_a_callback_token_echoed_by_omi_reaches_no_file_and_no_output(
    runner, env, tmp_path, ledger_path, reports_dir
):
    sim, _ = env
    batch_id = approved_one_row(runner, tmp_path, ledger_path, reports_dir)
    token = callbacks.token(Secret(WEBHOOK_SECRET), batch_id, 2, "execute")
    echo = {"status_code": -9999, "message": "invalid_callback",
            "payload": {"error": f"header X-Omi-Batch-Token: {token} is not allowed",
                        "requestId": f"r-{token}"}}  # fmt: skip
    sim.script(ok_preview(), {"status": 400, "body": echo})  # preflight, then the execute
    result = invoke(runner, "execute", batch_id, "--yes", *opts(ledger_path, reports_dir))
    assert result.exit_code == 1
    with Ledger(ledger_path) as ledger:
        row = ledger.row(batch_id, 2)
        assert row["state"] == "failed"
        assert row["error"] == (
            "OMI answered 400 invalid_callback: header X-Omi-Batch-Token: *** is not allowed"
        )
    assert token not in result.stdout and token not in result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-results.csv") for p in files)
    for path in files:
        assert token.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------- 2. any attempt


@pytest.mark.parametrize(
    "second, state, stops",
    [
        ({"status": 401, "body": {"status_code": -9999, "message": "api_key_invalid"}},
         "unconfirmed", AuthError),
        ({"status": 400, "body": {"status_code": -9999, "message": "user_not_found"}},
         "unconfirmed", None),
    ],
    ids=["timeout-then-401", "timeout-then-400"],
)  # fmt: skip
def test_a_timed_out_attempt_keeps_the_row_unconfirmed_whatever_the_last_says(
    make_simulator, tmp_path, make_stack, second, state, stops
):
    sim, server = make_simulator()
    stack = make_stack(server, timeout=0.3, retry=ONE_TRY_THEN_ONE)
    batch_id = stack.pipeline.create_batch(read_plan(write(tmp_path, ONE_ROW)))
    stack.pipeline.preview(batch_id)
    stack.pipeline.approve(batch_id, approve_all=True)
    timed_out = {"status": 202, "body": envelope({"requestId": "late"}), "delay": 1.0}
    sim.script(ok_preview(), timed_out, second)
    if stops is None:
        stack.pipeline.execute(batch_id)
    else:
        summary = stack.pipeline.execute(batch_id)  # the batch still stops on a refused key
        assert isinstance(summary.stopped, stops) and summary.sent == 1  # after sending: exit 1
    row = stack.ledger.row(batch_id, 2)
    assert row["state"] == state
    assert row["error"].startswith(
        "outcome unknown: an earlier attempt may have reached OMI (timeout, reset or 5xx), then "
    )
    attempts = stack.ledger._query(
        "SELECT number, vendor_code, outcome_unknown FROM attempts WHERE phase = 'execute'"
    )
    assert [(a["number"], a["vendor_code"], a["outcome_unknown"]) for a in attempts] == [
        (1, "timeout", 1), (2, second["body"]["message"], 0)
    ]  # fmt: skip


# --------------------------------------------------------------------------- 3. stale ERROR


def _callback(ledger, batch_id, status, request_id):
    body = {"requestId": request_id, "status": status, "payload": {"updatedRecords": 0}}
    return ledger.receive_callback(
        batch_id=batch_id, row=2, phase="execute", raw_body=b"{}", headers={},
        remote="127.0.0.1", body=body,
    )  # fmt: skip


def _submitted_twice(ledger: Ledger, tmp_path, new_request: str | None) -> str:
    plan = read_plan(write(tmp_path, ONE_ROW))
    from dataclasses import asdict

    batch_id = ledger.create_batch(source_file="d.csv", source_sha256=plan.sha256,
                                   created_by="t", base_url="http://x", options={},
                                   input_rows=1, warnings=[],
                                   rows=[asdict(t) for t in plan.transfers])  # fmt: skip
    attempt = {"endpoint": "/x", "number": 1, "started_at": "t", "elapsed_ms": 1.0,
               "http_status": 202, "request_id": "old"}  # fmt: skip
    for state in ("previewed", "approved", "submitted"):
        ledger.record_step(batch_id, 2, event=state, state=state)
    ledger.record_step(batch_id, 2, event="accepted", phase="execute", attempts=[attempt],
                       request_id="old")  # fmt: skip
    ledger.record_step(batch_id, 2, event="unconfirmed", state="unconfirmed")
    ledger.record_step(batch_id, 2, event="resubmitted", state="submitted", request_id=None)
    if new_request:
        ledger.record_step(batch_id, 2, event="accepted", request_id=new_request)
    return batch_id


@pytest.mark.parametrize("new_request", ["new", None], ids=["new-id-known", "not-yet-accepted"])
def test_a_late_error_of_an_older_request_is_stale_and_a_success_still_counts(
    ledger_path, tmp_path, new_request
):
    with Ledger(ledger_path) as ledger:
        batch_id = _submitted_twice(ledger, tmp_path, new_request)
        assert _callback(ledger, batch_id, "ERROR", "old") == "stale"
        row = ledger.row(batch_id, 2)
        assert (row["state"], row["request_id"], row["error"]) == ("submitted", new_request, None)
        assert _callback(ledger, batch_id, "SUCCESS", "old") == "applied"
        assert ledger.row(batch_id, 2)["state"] == "succeeded"
        verdicts = [(c["request_id"], c["verdict"], c["applied"]) for c in ledger.callbacks()]
        assert verdicts == [("old", "stale", False), ("old", "applied", True)]


# --------------------------------------------------------------------------- 4. needs review


def test_conflicting_callbacks_are_shown_in_the_report_status_and_exit_code(
    runner, env, tmp_path, ledger_path, reports_dir
):
    batch_id = executed_one_row(runner, tmp_path, ledger_path, reports_dir)
    with Ledger(ledger_path) as ledger:
        request_id = ledger.row(batch_id, 2)["request_id"]
        assert _callback(ledger, batch_id, "ERROR", request_id) == "conflict"
    result = invoke(runner, "execute", batch_id, "--yes", *opts(ledger_path, reports_dir))
    assert result.exit_code == 1
    [row] = read_csv(reports_dir / f"{batch_id}-results.csv")
    assert (row["status"], row["error"]) == (
        "succeeded",
        "needs review: conflicting callbacks (SUCCESS then ERROR)",
    )
    status = invoke(runner, "status", batch_id, "--ledger", ledger_path)
    assert "succeeded (needs review)" in status.stdout


def test_the_report_flags_a_row_needing_review_even_without_the_text(tmp_path):
    row = {"row": 2, "source_email": "a@x.vn", "target_email": "b@x.vn", "state": "succeeded",
           "conversations_previewed": 1, "updated_records": 1, "request_id": "r", "attempts": 1,
           "submitted_at": "", "completed_at": "", "error": None, "preview_error": None,
           "needs_review": True, "replace_existing_members": False, "conv_ids": [],
           "batch_id": "b"}  # fmt: skip
    written = write_result_reports([row], "b", tmp_path)
    assert read_csv(written["results"])[0]["error"] == "needs review: conflicting callbacks"


# --------------------------------------------------------------------------- 5. attempts


def test_preflight_and_accepted_attempts_are_in_the_ledger(make_simulator, tmp_path, make_stack):
    _, server = make_simulator()
    stack = make_stack(server)
    batch_id = stack.run(write(tmp_path, ONE_ROW))
    events = [e for e in stack.ledger.events(batch_id) if e["row"] == 2]
    kinds = [(e["kind"], e["data"].get("phase")) for e in events]
    # create_batch's preflight (stored once the batch exists), execute's preflight, then the
    # execute attempt written just before its "accepted" step, in the same transaction.
    assert kinds.count(("attempt", "preflight")) == 2
    accepted = next(i for i, e in enumerate(events) if e["kind"] == "accepted")
    attempt = events[accepted - 1]
    assert (attempt["kind"], attempt["data"]["phase"], attempt["data"]["http_status"]) == (
        "attempt",
        "execute",
        202,
    )
    assert attempt["data"]["request_id"] == stack.ledger.row(batch_id, 2)["request_id"]


# --------------------------------------------------------------------------- 6. batch lock

HOLD = """
import sys
from omi_batch.pipeline import BatchLock
with BatchLock(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def another_process_executing(ledger_path, batch_id: str):
    """Another process holding the batch's lock, through ``ledger_path`` (the ledger or a link
    to it), until the block ends; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ledger_path), batch_id],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def assert_refused_as_busy(result, batch_id: str, pid: int) -> None:
    assert result.exit_code == 2
    assert result.stderr.endswith(
        f"Error: batch {batch_id} is being executed by another process (pid {pid}): "
        "nothing was sent; run this again once it has finished\n"
    )


@pytest.mark.parametrize("command", ["execute", "reconcile"])
def test_a_second_process_on_the_same_batch_is_refused_with_nothing_sent(
    runner, env, tmp_path, ledger_path, reports_dir, command
):
    sim, _ = env
    batch_id = approved_one_row(runner, tmp_path, ledger_path, reports_dir)
    with another_process_executing(ledger_path, batch_id) as pid:
        requests = len(sim.events)
        extra = ["--yes"] if command == "execute" else []
        result = invoke(runner, command, batch_id, *extra, *opts(ledger_path, reports_dir))
        assert_refused_as_busy(result, batch_id, pid)
        assert len(sim.events) == requests
    result = invoke(runner, "execute", batch_id, "--yes", *opts(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output


def test_a_second_execute_through_a_symlink_to_the_ledger_is_refused(
    runner, env, tmp_path, ledger_path, reports_dir
):
    sim, _ = env
    batch_id = approved_one_row(runner, tmp_path, ledger_path, reports_dir)
    other_name = tmp_path / "elsewhere" / "same-ledger.db"
    other_name.parent.mkdir()
    other_name.symlink_to(ledger_path)
    with another_process_executing(other_name, batch_id) as pid:
        requests = len(sim.events)
        result = invoke(runner, "execute", batch_id, "--yes", *opts(ledger_path, reports_dir))
        assert_refused_as_busy(result, batch_id, pid)
        assert len(sim.events) == requests


def test_execute_whose_reports_cannot_be_written_says_so_in_one_line_and_resumes(
    runner, env, tmp_path, ledger_path, reports_dir
):
    sim, _ = env
    batch_id = approved_one_row(runner, tmp_path, ledger_path, reports_dir)
    a_file = tmp_path / "reports.txt"
    a_file.write_text("a file where a folder of the reports should be")
    unwritable = a_file / "out"
    result = invoke(runner, "execute", batch_id, "--yes", *opts(ledger_path, unwritable))
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]
    assert last == (
        f"Error: cannot write {unwritable}: Not a directory. Nothing is lost: the ledger holds "
        f"every row's state; {unwritable} (or a folder above it) is not a folder: name a "
        "folder, then run the same command again to resume (omi-batch report BATCH writes "
        "the reports alone)"
    )
    assert "Traceback" not in result.output
    sent = len(sim.events)
    again = invoke(runner, "execute", batch_id, "--yes", *opts(ledger_path, reports_dir))
    assert again.exit_code == 0, again.output
    assert len(sim.events) == sent  # the row was done: nothing sent again
    assert (reports_dir / f"{batch_id}-results.csv").exists()


# --------------------------------------------------------------------------- 7, 8. approve


def test_approving_from_a_report_written_after_execute_leaves_finished_rows(
    runner, env, tmp_path, ledger_path, reports_dir
):
    batch_id = executed_one_row(runner, tmp_path, ledger_path, reports_dir)
    again = tmp_path / "again"  # the preview report in reports_dir is never rewritten (#10)
    assert invoke(runner, "report", batch_id, "--ledger", ledger_path, "--reports",
                  again).exit_code == 0  # fmt: skip
    report = again / f"{batch_id}-preview.csv"
    assert read_csv(report)[0]["approved"] == "yes"
    result = invoke(runner, "approve", batch_id, "--report", report, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[:2] == [
        "row 2 is already succeeded: left as it is",
        f"Batch {batch_id}: 0 row(s) approved, 0 skipped.",
    ]
    with Ledger(ledger_path) as ledger:
        assert ledger.row(batch_id, 2)["state"] == "succeeded"


def test_approve_all_leaves_the_rows_the_operator_skipped(
    runner, env, tmp_path, ledger_path, reports_dir
):
    batch_id = previewed_batch(runner, tmp_path, ledger_path, reports_dir, TWO_OF_BAO)
    report = reports_dir / f"{batch_id}-preview.csv"
    rows = read_csv(report)
    rows[0]["approved"], rows[1]["approved"] = "yes", ""
    edited = tmp_path / "edited.csv"
    with edited.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert invoke(runner, "approve", batch_id, "--report", edited, "--ledger",
                  ledger_path).exit_code == 0  # fmt: skip
    result = invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 0 row(s) approved, 0 skipped." in result.stderr
    with Ledger(ledger_path) as ledger:
        assert {r["row"]: r["state"] for r in ledger.rows(batch_id)} == {
            2: "approved", 3: "skipped"}  # fmt: skip


# --------------------------------------------------------------------------- 9. held rows


def test_a_job_runs_held_rows_once_reconcile_confirms_the_row_before_them(tmp_path, simulator):
    sim, server = simulator
    with socket.socket() as sock:  # callbacks go nowhere: every execute ends unconfirmed
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    job = make_job(tmp_path, policy="auto", wait=0.5, listen=False)
    job.inbox.mkdir(parents=True)
    write(job.inbox, TWO_OF_BAO)
    env = {"OMI_BASE_URL": server.url, "OMI_API_KEY": API_KEY, "OMI_WEBHOOK_URL": dead,
           "OMI_WEBHOOK_SECRET": WEBHOOK_SECRET}  # fmt: skip
    result = run_tick(job, env=env)
    [batch_id] = result.created
    assert result.archived == [batch_id]
    with Ledger(job.ledger) as ledger:
        rows = {r["row"]: r for r in ledger.rows(batch_id)}
    # Row 2 was verified by preview; row 3, held behind it, was then sent (once).
    assert (rows[2]["state"], rows[2]["verified_by"]) == ("succeeded", "preview")
    assert rows[3]["state"] == "unconfirmed"
    assert execute_requests(sim) == {2: 1, 3: 1}
    assert sim.count("bao.pham@example.vn", "anh.vu@example.vn") == 0
