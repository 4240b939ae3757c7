"""The pipeline end to end: preview, approve, execute, wait, reconcile and the reports, over real
loopback HTTP against the simulator, with a real SQLite ledger and the real webhook receiver.

The rule every test keeps: a row is ``succeeded`` only with a SUCCESS callback stored in the
ledger or a verifying preview (``verified_by='preview'``); anything else ends failed or
unconfirmed, honestly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import zipfile
from collections import Counter
from pathlib import Path

import openpyxl
import pytest
from helpers import (
    API_KEY,
    WEBHOOK_SECRET,
    Stack,
    approved_batch,
    departures_csv,
    execute_interrupted,
    execute_requests,
    use_simulator,
    wait_until,
)

from omi_batch import callbacks
from omi_batch.cli import cli
from omi_batch.config import Secret
from omi_batch.errors import UsageError
from omi_batch.ledger import Ledger
from omi_batch.reports import RESULTS_COLUMNS, escape_cell
from omi_batch.roster import read_plan
from omi_batch.simulator import Faults
from omi_batch.spool import Spool, spool_path

ROOT = Path(__file__).resolve().parent.parent
VIP = "6a92a56ca95c2c0b07465834;6ac43424980ae047cc1ebe17"

# Every agent here is in the simulator's sample fixture; rows 2-6 preview ok.
CSV = f"""source_email,target_email,replace_existing_members,conv_ids,note
lan.nguyen@example.vn,tuan.ho@example.vn,false,,=HYPERLINK("http://x")
bao.pham@example.vn,mai.hoang@example.vn,true,{VIP},Phạm Quốc Bảo: 2 khách VIP
bao.pham@example.vn,anh.vu@example.vn,false,,the rest of Bảo's
hung.bui@example.vn,ngoc.do@example.vn,true,,
minh.tran@example.vn,hong.le@example.vn,false,,
"""
ROWS = [2, 3, 4, 5, 6]
# The sample's last row names an agent OMI does not know: the directory check refuses the file
# (exit 2, no batch); with --no-check-agents the row fails its preview instead.
UNKNOWN_TARGET = "thu.dang@example.vn,long.ly@example.vn,false,,no OMI account yet\n"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def csv_file(tmp_path):
    return departures_csv(tmp_path, CSV)


def invoke(runner, *args):
    result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def common(ledger_path, reports_dir):
    return ["--ledger", ledger_path, "--reports", reports_dir]


def fast(wait="5"):
    return ["--rate", "1000", "--concurrency", "4", "--listen", "127.0.0.1:0", "--wait", wait]


def batch_of(ledger_path) -> str:
    with Ledger(ledger_path) as ledger:
        return ledger.batches()[0]["id"]


def read_report(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf"), f"{path.name} has no UTF-8 BOM"
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def assert_honest(ledger: Ledger, batch_id: str) -> None:
    """No row is succeeded without a stored SUCCESS callback or a verifying preview."""
    good = {
        c["row"]
        for c in ledger.callbacks(batch_id)
        if c["phase"] == "execute" and c["status"] == "SUCCESS" and c["applied"]
    }
    verified = {e["row"] for e in ledger.events(batch_id) if e["kind"] == "verified_by_preview"}
    for row in ledger.rows(batch_id):
        if row["state"] == "succeeded":
            if row["verified_by"] == "preview":  # a reconcile preview found nothing left
                assert row["row"] in verified, row
            else:
                assert row["row"] in good, row
        if row["state"] == "failed" and row["callback_status"] == "ERROR":
            assert any(
                c["row"] == row["row"] and c["status"] == "ERROR"
                for c in ledger.callbacks(batch_id)
            )


# --------------------------------------------------------------------------- run


def test_run_moves_every_row_and_confirms_each_by_callback(
    runner, env, csv_file, ledger_path, reports_dir
):
    sim, _ = env
    with csv_file.open("a", encoding="utf-8") as handle:
        handle.write(UNKNOWN_TARGET)
    # Without the directory check, row 7 is caught by its preview and lands in the retry report.
    result = invoke(runner, "run", csv_file, "--yes", "--no-check-agents", *fast(),
                    *common(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 1, result.output  # row 7 failed its preview
    batch_id = batch_of(ledger_path)
    with Ledger(ledger_path) as ledger:
        states = {r["row"]: r["state"] for r in ledger.rows(batch_id)}
        assert states == {2: "succeeded", 3: "succeeded", 4: "succeeded", 5: "succeeded",
                          6: "succeeded", 7: "preview_failed"}  # fmt: skip
        assert_honest(ledger, batch_id)
        assert all(r["verified_by"] == "callback" for r in ledger.rows(batch_id, ["succeeded"]))
    assert execute_requests(sim) == Counter({2: 1, 3: 1, 4: 1, 5: 1, 6: 1})
    assert sorted(p.name for p in reports_dir.iterdir()) == [
        f"{batch_id}-{kind}"
        for kind in ("preview.csv", "results.csv", "results.xlsx", "retry.csv", "review.xlsx",
                     "targets.csv")
    ]  # fmt: skip
    results = read_report(reports_dir / f"{batch_id}-results.csv")
    assert list(results[0]) == RESULTS_COLUMNS
    by_row = {int(r["row"]): r for r in results}
    assert by_row[7]["status"] == "preview_failed"
    for number in ROWS:
        r = by_row[number]
        assert r["status"] == "succeeded"
        assert int(r["difference"]) == int(r["updated_records"]) - int(r["conversations_previewed"])
        assert r["attempts"] == "1" and r["request_id"] and r["completed_at"]
    retry = read_report(reports_dir / f"{batch_id}-retry.csv")
    assert [(r["source_email"], r["target_email"]) for r in retry] == [
        ("thu.dang@example.vn", "long.ly@example.vn")
    ]
    assert f"Batch {batch_id}: executing 5 row(s)" in result.stderr


def test_run_without_yes_off_a_terminal_is_refused_before_anything_moves(
    runner, env, csv_file, ledger_path, reports_dir
):
    sim, _ = env
    result = invoke(runner, "run", csv_file, *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 2
    assert "Error: not at a terminal: confirm with --yes" in result.stderr
    assert [e for e in sim.events if e["kind"] == "request"] == []  # not even a preview
    assert not ledger_path.exists()


def test_execute_without_yes_off_a_terminal_is_refused_before_anything_moves(
    runner, env, ledger_path, reports_dir
):
    sim, _ = env
    result = invoke(runner, "execute", "20261125-000000-abcd", *common(ledger_path, reports_dir))
    assert result.exit_code == 2
    assert "Error: not at a terminal: confirm with --yes" in result.stderr
    assert [e for e in sim.events if e["kind"] == "request"] == []


def test_run_limit_takes_only_the_first_rows(runner, env, csv_file, ledger_path, reports_dir):
    sim, _ = env
    result = invoke(runner, "run", csv_file, "--yes", "--limit", "2", *fast(),
                    *common(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 0, result.output
    with Ledger(ledger_path) as ledger:
        rows = ledger.rows(batch_of(ledger_path))
    assert [(r["row"], r["state"]) for r in rows] == [(2, "succeeded"), (3, "succeeded")]
    assert execute_requests(sim) == Counter({2: 1, 3: 1})


def test_rows_of_one_source_run_in_order_each_confirmed_before_the_next(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator(faults=Faults(callback_delay=0.2))
    stack = make_stack(server)
    batch_id = stack.run(csv_file)
    assert {r["state"] for r in stack.ledger.rows(batch_id)} == {"succeeded"}
    events = sim.events
    position = {}
    for index, event in enumerate(events):
        body = event.get("body") or {}
        url = (
            (body.get("callbackResultConfig") or {}).get("url", "")
            if event["kind"] == "request"
            else event.get("url", "")
        )
        if url.endswith("/execute"):
            row = int(url.rsplit("/", 2)[1])
            position.setdefault((event["kind"], row), index)
    # Bảo's conv_ids row (3) is confirmed before his catch-all row (4) is even sent.
    assert position[("request", 3)] < position[("callback", 3)] < position[("request", 4)]


def test_an_earlier_failed_row_holds_the_rest_of_its_source(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator(faults=Faults(callback_error_rate=1.0))
    stack = make_stack(server)
    batch_id = stack.run(csv_file)
    rows = {r["row"]: r for r in stack.ledger.rows(batch_id)}
    assert rows[3]["state"] == "failed"
    assert rows[4]["state"] == "approved"
    assert rows[4]["error"] == "held: row 3 of the same source is failed"
    assert rows[4]["held_by"] == 3  # the hold is data: the row that holds it
    # Run again: the failed row still holds its source's catch-all row.
    stack.pipeline.execute(batch_id)
    assert stack.ledger.row(batch_id, 4)["state"] == "approved"
    assert execute_requests(sim)[4] == 0


def test_a_held_row_runs_once_its_blocker_is_reconciled_and_is_no_longer_held(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator(faults=Faults(drop_callbacks=1.0))
    stack = make_stack(server, wait=0.3)
    batch_id = stack.run(csv_file)
    held = stack.ledger.row(batch_id, 4)
    assert (held["state"], held["held_by"]) == ("approved", 3)  # row 3 is unconfirmed
    sim.faults.drop_callbacks = 0
    stack.pipeline.wait = 20  # row 4's callback now comes: a busy machine may take a while
    stack.pipeline.reconcile(batch_id)  # row 3 was applied: its preview finds nothing left
    assert stack.ledger.row(batch_id, 3)["state"] == "succeeded"
    stack.pipeline.execute(batch_id)
    row = stack.ledger.row(batch_id, 4)
    assert (row["state"], row["held_by"], row["error"]) == ("succeeded", None, None)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"status": "SUCCESS", "payload": {"updatedRecords": "5"}},
         'needs review: updatedRecords is not a count ("5"); no callback within 3 s could be '
         "applied: 1 came, kept in the ledger (unexpected)"),
        ({"status": "COMPLETED", "payload": {"updatedRecords": 5}},
         "no callback within 3 s could be applied: 1 came, kept in the ledger (unexpected)"),
        ({"requestId": None, "status": "SUCCESS"},
         "no callback within 3 s could be applied: 1 came, kept in the ledger "
         "(refused:no_request_id)"),
    ],
)  # fmt: skip
def test_a_row_left_unconfirmed_says_which_callbacks_came_and_keeps_their_review_note(
    make_simulator, tmp_path, csv_file, make_stack, body, error
):
    """A callback came for the row but could not be applied: its row says so, and a review
    note it left stays, instead of a bare "no callback within N s"."""
    import threading

    from helpers import send

    sim, server = make_simulator(faults=Faults(drop_callbacks=1.0))  # OMI's own never comes
    stack = make_stack(server, wait=3)
    batch_id = stack.approved(csv_file, limit=1)

    def deliver() -> None:  # as OMI would, once the row's 202 is stored
        if wait_until(lambda: stack.ledger.row(batch_id, 2)["request_id"] is not None):
            given = stack.ledger.row(batch_id, 2)["request_id"]
            send(stack.receiver, batch_id, 2, body if "requestId" in body else
                 {"requestId": given, **body})  # fmt: skip

    sender = threading.Thread(target=deliver)
    sender.start()
    stack.pipeline.execute(batch_id)
    sender.join(timeout=30)
    row = stack.ledger.row(batch_id, 2)
    assert (row["state"], row["error"]) == ("unconfirmed", error)


def test_a_transfer_applied_by_an_attempt_whose_answer_was_lost_counts_what_it_moved(
    make_simulator, tmp_path, csv_file, make_stack
):
    """OMI applied the first attempt but its answer was lost (reset); the retry moved nothing
    more. The first attempt's SUCCESS names a request id we were never given: it is this
    row's all the same (what it moved counts, nothing flagged), and the run does not end with
    it left in the spool."""
    sim, server = make_simulator()
    stack = make_stack(server, wait=10)
    batch_id = stack.approved(csv_file, limit=1)
    previewed = stack.ledger.row(batch_id, 2)["conversations_previewed"]
    assert previewed > 0
    sim.script({"apply": True}, {"apply": True, "reset": True})  # the preflight; then lost
    stack.pipeline.execute(batch_id)
    row = stack.ledger.row(batch_id, 2)
    assert (row["state"], row["updated_records"], row["needs_review"], row["error"]) == (
        "succeeded", previewed, False, None)  # fmt: skip
    assert execute_requests(sim)[2] == 2
    verdicts = sorted(c["verdict"] for c in stack.ledger.callbacks(batch_id))
    assert verdicts == ["applied", "confirmed"]
    assert Spool(spool_path(tmp_path / "ledger.db")).count() == 0


def test_callbacks_of_attempts_that_all_timed_out_decide_the_row_before_the_reports(
    make_simulator, tmp_path, csv_file, make_stack
):
    """Every attempt timed out, yet OMI applied them and called back: the row ends
    succeeded (late) with what moved, not unconfirmed with its callbacks left in the spool."""
    from helpers import FAST_RETRY

    sim, server = make_simulator()
    stack = make_stack(server, wait=10, timeout=0.5)
    batch_id = stack.approved(csv_file, limit=1)
    previewed = stack.ledger.row(batch_id, 2)["conversations_previewed"]
    slow = {"apply": True, "delay": 1.5}  # applied, called back, answered too late
    sim.script({"apply": True}, *[slow] * FAST_RETRY.max_attempts)
    stack.pipeline.execute(batch_id)
    row = stack.ledger.row(batch_id, 2)
    assert (row["state"], row["updated_records"], row["verified_by"]) == (
        "succeeded", previewed, "callback")  # fmt: skip
    assert "late" in {c["verdict"] for c in stack.ledger.callbacks(batch_id)}
    assert Spool(spool_path(tmp_path / "ledger.db")).count() == 0


# --------------------------------------------------------------------------- preview


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_preview_counts_every_row_in_both_preview_modes(
    runner, make_simulator, monkeypatch, csv_file, ledger_path, reports_dir, mode
):
    sim, server = make_simulator(preview_mode=mode)
    monkeypatch.setenv("OMI_BASE_URL", server.url)
    monkeypatch.setenv("OMI_API_KEY", API_KEY)
    monkeypatch.setenv("OMI_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.delenv("OMI_WEBHOOK_URL", raising=False)
    result = invoke(runner, "preview", csv_file, *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.strip()
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", batch_id)
    report = read_report(reports_dir / f"{batch_id}-preview.csv")
    plan = read_plan(csv_file)
    expected = {
        t.row: sim.count(t.source_email, t.target_email, list(t.conv_ids) or None,
                         t.replace_existing_members)
        for t in plan.transfers
    }  # fmt: skip
    assert {int(r["row"]): int(r["conversations"]) for r in report} == expected
    assert {r["preview_status"] for r in report} == {"previewed"}
    assert execute_requests(sim) == Counter()  # a preview moves nothing
    targets = read_report(reports_dir / f"{batch_id}-targets.csv")
    assert list(targets[0]) == ["target_email", "sources", "conversations"]
    assert sum(int(t["conversations"]) for t in targets) == sum(expected.values())


def test_async_preview_without_a_webhook_fails_each_row_saying_why(
    runner, make_simulator, monkeypatch, csv_file, ledger_path, reports_dir
):
    sim, server = make_simulator(preview_mode="async")
    monkeypatch.setenv("OMI_BASE_URL", server.url)
    monkeypatch.setenv("OMI_API_KEY", API_KEY)
    monkeypatch.delenv("OMI_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("OMI_WEBHOOK_URL", raising=False)
    result = invoke(runner, "preview", csv_file, "--rate", "1000",
                    *common(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 1
    with Ledger(ledger_path) as ledger:
        rows = ledger.rows(batch_of(ledger_path))
    assert {r["state"] for r in rows} == {"preview_failed"}
    assert rows[0]["preview_error"] == (
        "OMI sends this preview's count by callback, and no webhook is set "
        "(set OMI_WEBHOOK_URL and OMI_WEBHOOK_SECRET, or use --listen)"
    )


def test_preview_report_escapes_formula_cells(runner, env, csv_file, ledger_path, reports_dir):
    result = invoke(runner, "preview", csv_file, *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    report = read_report(reports_dir / f"{result.stdout.strip()}-preview.csv")
    assert report[0]["note"] == '\'=HYPERLINK("http://x")'
    assert report[1]["note"] == "Phạm Quốc Bảo: 2 khách VIP"


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_cells_that_excel_would_run_are_escaped(text):
    assert escape_cell(text) == "'" + text
    assert escape_cell("a" + text) == "a" + text


# --------------------------------------------------------------------------- approve


@pytest.fixture
def previewed(runner, env, csv_file, ledger_path, reports_dir):
    """A previewed batch: (batch id, its preview report's rows)."""
    result = invoke(runner, "preview", csv_file, *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.strip()
    return batch_id, read_report(reports_dir / f"{batch_id}-preview.csv")


def write_report(path: Path, rows: list[dict], *, delimiter: str = ",", bom: bool = True) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8-sig" if bom else "utf-8")
    return path


def test_approve_from_the_edited_report(runner, previewed, ledger_path, tmp_path):
    batch_id, report = previewed
    words = {2: "Yes", 3: "x", 4: "TRUE", 5: "", 6: "no"}
    for r in report:
        r["approved"] = words[int(r["row"])]
    edited = write_report(tmp_path / "edited.csv", report, delimiter=";", bom=False)
    result = invoke(runner, "approve", batch_id, "--report", edited, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 3 row(s) approved, 2 skipped." in result.stderr
    with Ledger(ledger_path) as ledger:
        rows = {r["row"]: r for r in ledger.rows(batch_id)}
    assert {n: r["state"] for n, r in rows.items()} == {
        2: "approved",
        3: "approved",
        4: "approved",
        5: "skipped",
        6: "skipped",
    }
    assert rows[2]["approved_how"] == "report edited.csv"
    assert rows[2]["approved_by"]


@pytest.mark.parametrize(
    "edit,problem",
    [
        (lambda rows: rows[1].update(source_email="lan.nguyen@example.vn"),
         "row 3: source_email is 'lan.nguyen@example.vn' in the report but "
         "'bao.pham@example.vn' in the ledger: approve records only the approved and note "
         "columns"),
        (lambda rows: rows[2].update(target_email="hong.le@example.vn"),
         "row 4: target_email is 'hong.le@example.vn' in the report but "
         "'anh.vu@example.vn' in the ledger: approve records only the approved and note "
         "columns"),
        (lambda rows: rows[1].update(conv_ids="6a92a56ca95c2c0b07465834"),
         "row 3: conv_ids is '6a92a56ca95c2c0b07465834' in the report but "
         f"'{VIP}' in the ledger: approve records only the approved and note columns"),
        (lambda rows: rows.append(dict(rows[0], row="9")),
         "row 9: not in batch {batch} (rows were added)"),
    ],
    ids=["source changed", "target changed", "conv_ids changed", "row added"],
)  # fmt: skip
def test_approve_refuses_a_report_that_no_longer_matches(
    runner, previewed, ledger_path, tmp_path, edit, problem
):
    batch_id, report = previewed
    for r in report:
        r["approved"] = "yes"
    edit(report)
    edited = write_report(tmp_path / "edited.csv", report)
    result = invoke(runner, "approve", batch_id, "--report", edited, "--ledger", ledger_path)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: edited.csv no longer matches batch {batch_id}: nothing was approved\n"
        f"  {problem.format(batch=batch_id)}\n"
    )
    with Ledger(ledger_path) as ledger:
        assert {r["state"] for r in ledger.rows(batch_id)} == {"previewed"}


def test_approve_refuses_an_unknown_approved_word(runner, previewed, ledger_path, tmp_path):
    batch_id, report = previewed
    report[0]["approved"] = "maybe"
    edited = write_report(tmp_path / "edited.csv", report)
    result = invoke(runner, "approve", batch_id, "--report", edited, "--ledger", ledger_path)
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: edited.csv has 1 problem(s); nothing was approved\n"
        "  report line 2: approved is 'maybe'; use yes / có / đồng ý / ok / x / ✓ to approve, "
        "no / không or empty to leave it\n"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "Error: say which rows: --all, or --report FILE"),
        (["--all", "--report", "REPORT"], "Error: --all and --report cannot be used together"),
    ],
)
def test_approve_needs_exactly_one_way(runner, previewed, ledger_path, reports_dir, args, message):
    batch_id, _ = previewed
    args = [str(reports_dir / f"{batch_id}-preview.csv") if a == "REPORT" else a for a in args]
    result = invoke(runner, "approve", batch_id, *args, "--ledger", ledger_path)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_stale_preview_must_be_refreshed_before_approval(runner, previewed, ledger_path):
    batch_id, _ = previewed
    result = invoke(runner, "approve", batch_id, "--all", "--max-age", "0", "--ledger", ledger_path)
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: the preview of rows 2, 3, 4 and 2 more is older than --max-age 0 h: preview it again "
        f"(omi-batch preview --batch {batch_id}) and approve again\n"
    )
    with Ledger(ledger_path) as ledger:
        assert {r["state"] for r in ledger.rows(batch_id)} == {"previewed"}
    result = invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path)
    assert result.exit_code == 0
    assert f"Batch {batch_id}: 5 row(s) approved, 0 skipped." in result.stderr


def test_default_max_age_is_24_hours(make_simulator, tmp_path, csv_file, make_stack):
    from datetime import UTC, datetime, timedelta

    _, server = make_simulator()
    stack = make_stack(server)
    batch_id = stack.pipeline.create_batch(read_plan(csv_file))
    stack.pipeline.preview(batch_id)
    later = datetime.now(UTC) + timedelta(hours=24, minutes=1)
    with pytest.raises(UsageError, match="older than --max-age 24 h"):
        stack.pipeline.approve(batch_id, approve_all=True, now=later)
    approved, skipped = stack.pipeline.approve(
        batch_id, approve_all=True, now=later - timedelta(minutes=2)
    )
    assert (approved, skipped) == (ROWS, [])


# --------------------------------------------------------------------------- faults


FAULTS = {
    "5xx": dict(error_rate=0.4),
    "429 with Retry-After": dict(rate_limit_rate=0.4, retry_after=0.01),
    "connection resets": dict(reset_rate=0.3),
    "slow answers": dict(slow_rate=0.3, slow_seconds=0.6),
    "dropped callbacks": dict(drop_callbacks=0.5),
    "duplicated callbacks": dict(duplicate_callbacks=1.0),
    "late callbacks": dict(callback_delay=0.4),
    "reordered callbacks": dict(reorder_callbacks=True),
    "ERROR callbacks": dict(callback_error_rate=0.5),
    "everything": dict(error_rate=0.2, rate_limit_rate=0.2, retry_after=0.01, reset_rate=0.1,
                       drop_callbacks=0.3, duplicate_callbacks=0.3, callback_error_rate=0.3),
}  # fmt: skip


def settle(sim, stack: Stack, batch_id: str) -> None:
    """Wait until every callback the simulator sent is stored: one answered while the ledger
    was busy waits in the receiver's spool until its writer applies it."""
    assert sim.wait_idle(10)
    delivered = sum(1 for e in sim.events if e["kind"] == "callback" and e["delivery"] == 200)
    spool = Spool(spool_path(stack.ledger.path))
    try:
        assert wait_until(
            lambda: spool.count() == 0 and len(stack.ledger.callbacks(batch_id)) >= delivered
        )
    finally:
        spool.close()


@pytest.mark.parametrize("faults", FAULTS.values(), ids=FAULTS.keys())
def test_under_faults_every_row_ends_succeeded_or_honestly_not(
    make_simulator, tmp_path, csv_file, make_stack, faults
):
    sim, server = make_simulator(faults=Faults(**faults), seed=3)
    wait = 0.15 if "callback_delay" in faults else 1.5
    stack = make_stack(server, wait=wait, timeout=0.3)
    batch_id = stack.run(csv_file)
    settle(sim, stack, batch_id)  # late callbacks land after execute gave up waiting
    rows = stack.ledger.rows(batch_id)
    assert {r["state"] for r in rows} <= {"succeeded", "failed", "unconfirmed", "approved"}
    assert_honest(stack.ledger, batch_id)
    held = [r for r in rows if r["state"] == "approved"]
    for row in held:  # only a catch-all row behind its source's unfinished conv_ids row
        assert row["row"] == 4 and row["error"].startswith("held: row 3 of the same source")
    for row in rows:
        if row["state"] == "failed":
            assert row["error"]
    if "callback_delay" in faults:  # every callback came, late: each is kept and applied
        assert {r["state"] for r in rows} <= {"succeeded", "approved"}
        verdicts = {c["verdict"] for c in stack.ledger.callbacks(batch_id)}
        assert "late" in verdicts
    if "duplicate_callbacks" in faults and len(faults) == 1:
        assert {r["state"] for r in rows} == {"succeeded"}
        callbacks = stack.ledger.callbacks(batch_id)
        results = Counter(c["row"] for c in callbacks if c["verdict"] in ("applied", "late"))
        assert results == Counter(ROWS)  # each row got its result once
        # Each request is called back twice: its second copy is a duplicate. Under load an
        # execute may get no answer within --timeout and is sent again, so that row has two
        # requests (four callbacks); the first request's pair is kept, never applied twice.
        verdicts = Counter(c["verdict"] for c in callbacks)
        assert verdicts["duplicate"] == len({c["request_id"] for c in callbacks})


def test_a_row_sent_again_after_no_answer_has_both_requests_kept_and_one_result(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator(faults=Faults(duplicate_callbacks=1.0))
    stack = make_stack(server, wait=1.5, timeout=0.3)
    batch_id = stack.approved(csv_file, limit=1)
    # Execute's preflight preview is answered for real; OMI applies the execute but answers
    # after --timeout: the row is sent again.
    sim.script({"apply": True}, {"apply": True, "delay": 1.0})
    stack.pipeline.execute(batch_id)
    settle(sim, stack, batch_id)
    callbacks = stack.ledger.callbacks(batch_id)
    assert len(callbacks) == 4  # two requests, each called back twice
    assert len({c["request_id"] for c in callbacks}) == 2
    verdicts = Counter(c["verdict"] for c in callbacks)
    assert verdicts["duplicate"] == 2
    assert verdicts["applied"] + verdicts["late"] == 1
    assert [r["state"] for r in stack.ledger.rows(batch_id)] == ["succeeded"]
    assert_honest(stack.ledger, batch_id)


def test_dropped_callbacks_end_unconfirmed_and_reconcile_verifies_them(
    runner, make_simulator, monkeypatch, csv_file, ledger_path, reports_dir
):
    sim, server = make_simulator(faults=Faults(drop_callbacks=1.0))
    monkeypatch.setenv("OMI_BASE_URL", server.url)
    monkeypatch.setenv("OMI_API_KEY", API_KEY)
    monkeypatch.setenv("OMI_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.delenv("OMI_WEBHOOK_URL", raising=False)
    result = invoke(
        runner, "run", csv_file, "--yes", *fast("0.3"), *common(ledger_path, reports_dir)
    )
    assert result.exit_code == 1
    batch_id = batch_of(ledger_path)
    with Ledger(ledger_path) as ledger:
        states = {r["row"]: r["state"] for r in ledger.rows(batch_id)}
    # Bảo's catch-all row waits behind his unconfirmed conv_ids row.
    assert states == {2: "unconfirmed", 3: "unconfirmed", 4: "approved", 5: "unconfirmed",
                      6: "unconfirmed"}  # fmt: skip
    retry = read_report(reports_dir / f"{batch_id}-retry.csv")
    assert len(retry) == 5
    result = invoke(runner, "reconcile", batch_id, "--rate", "1000",
                    *common(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 1  # row 4 is still to execute
    with Ledger(ledger_path) as ledger:
        rows = {r["row"]: r for r in ledger.rows(batch_id)}
        assert_honest(ledger, batch_id)
    for number in (2, 3, 5, 6):
        assert rows[number]["state"] == "succeeded"
        assert rows[number]["verified_by"] == "preview"
    assert rows[4]["state"] == "approved"
    results = {int(r["row"]): r for r in read_report(reports_dir / f"{batch_id}-results.csv")}
    assert results[2]["status"] == "succeeded"


def test_reconcile_never_turns_a_failed_row_into_a_success(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator(faults=Faults(callback_error_rate=1.0))
    stack = make_stack(server)
    batch_id = stack.run(csv_file)
    assert {r["state"] for r in stack.ledger.rows(batch_id)} == {"failed", "approved"}
    stack.pipeline.reconcile(batch_id)
    assert {r["state"] for r in stack.ledger.rows(batch_id)} == {"failed", "approved"}
    assert_honest(stack.ledger, batch_id)


# An execute OMI accepts (202) but never does and never calls back about.
NEVER_DONE = {"status": 202, "body": {"instance_id": "stg", "status_code": 9999,
                                      "payload": {"requestId": "never-done"}}}  # fmt: skip


def test_reconcile_keeps_a_row_unconfirmed_while_something_is_left_to_move(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator()
    stack = make_stack(server, wait=0.2)
    batch_id = stack.approved(csv_file, limit=1)
    # Execute's preflight preview is answered for real; OMI accepts the transfer but never
    # does it, and never calls back.
    sim.script({"apply": True}, NEVER_DONE)
    stack.pipeline.execute(batch_id)
    assert stack.ledger.row(batch_id, 2)["state"] == "unconfirmed"
    stack.pipeline.reconcile(batch_id)
    row = stack.ledger.row(batch_id, 2)
    assert row["state"] == "unconfirmed"
    assert (
        row["error"] == f"reconcile: {row['conversations_previewed']} conversation(s) still to move"
    )


def test_reconcile_is_not_fooled_by_a_zero_beside_a_count_still_to_move(
    make_simulator, tmp_path, csv_file, make_stack
):
    """A preview answer giving ``updatedRecords: 0`` beside ``totalRecords: 5``: five are
    still to move, so the row is not verified."""
    sim, server = make_simulator()
    stack = make_stack(server, wait=0.2)
    batch_id = stack.approved(csv_file, limit=1)
    sim.script({"apply": True}, NEVER_DONE)
    stack.pipeline.execute(batch_id)
    assert stack.ledger.row(batch_id, 2)["state"] == "unconfirmed"
    both = {"updatedRecords": 0, "totalRecords": 5, "requestId": "p-1"}
    sim.script({"apply": True}, {"body": {"instance_id": "stg", "status_code": 9999,
                                          "payload": both}})  # fmt: skip
    stack.pipeline.reconcile(batch_id)
    row = stack.ledger.row(batch_id, 2)
    assert (row["state"], row["error"]) == (
        "unconfirmed", "reconcile: 5 conversation(s) still to move")  # fmt: skip


def test_without_a_webhook_execute_still_runs_and_rows_end_unconfirmed(
    runner, env, csv_file, ledger_path, reports_dir
):
    sim, _ = env
    result = invoke(
        runner, "preview", csv_file, "--rate", "1000", *common(ledger_path, reports_dir)
    )
    batch_id = result.stdout.strip()
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    result = invoke(
        runner, "execute", batch_id, "--yes", "--rate", "1000", *common(ledger_path, reports_dir)
    )
    assert result.exit_code == 1
    with Ledger(ledger_path) as ledger:
        rows = {r["row"]: r for r in ledger.rows(batch_id)}
    assert rows[2]["state"] == "unconfirmed"
    assert rows[2]["error"] == "no webhook: OMI cannot report the result; run reconcile"
    assert rows[4]["state"] == "approved"  # held behind row 3
    bodies = [e["body"] for e in sim.events if e["kind"] == "request" and e["body"]]
    assert not any("callbackResultConfig" in b for b in bodies)


def test_each_transfer_gets_its_own_callback_url_and_credential(
    runner, env, csv_file, ledger_path, reports_dir
):
    sim, _ = env
    result = invoke(runner, "run", csv_file, "--yes", *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    batch_id = batch_of(ledger_path)
    seen = {}
    for event in sim.events:
        body = event.get("body") or {}
        if event["kind"] == "request" and body.get("previewChanges") is False:
            config = body["callbackResultConfig"]
            row = int(config["url"].rsplit("/", 2)[1])
            assert config["url"].endswith(f"/callbacks/{batch_id}/{row}/execute")
            assert config["headers"] == {
                callbacks.HEADER: callbacks.token(Secret(WEBHOOK_SECRET), batch_id, row, "execute")
            }
            seen[row] = config["headers"][callbacks.HEADER]
    assert sorted(seen) == ROWS and len(set(seen.values())) == len(ROWS)


# --------------------------------------------------------------------------- exit 3


def test_a_rejected_key_stops_preview_with_exit_3_and_creates_no_batch(
    runner, env, csv_file, ledger_path, reports_dir, monkeypatch
):
    monkeypatch.setenv("OMI_API_KEY", "not-the-key")
    result = invoke(runner, "preview", csv_file, *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1].startswith("Error: OMI answered 401 api_key_invalid")
    with Ledger(ledger_path) as ledger:
        assert ledger.batches() == []
        assert ledger.events() == []
    assert list(reports_dir.iterdir()) == []


def test_a_rejected_key_stops_execute_with_exit_3_and_changes_no_row(
    runner, previewed, ledger_path, reports_dir, monkeypatch
):
    batch_id, _ = previewed
    sim_url = os.environ["OMI_BASE_URL"]
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    with Ledger(ledger_path) as ledger:
        before_rows = ledger.rows(batch_id)
        before_events = len(ledger.events())
    monkeypatch.setenv("OMI_API_KEY", "revoked-key")
    result = invoke(
        runner, "execute", batch_id, "--yes", *fast(), *common(ledger_path, reports_dir)
    )
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1].startswith("Error: OMI answered 401 api_key_invalid")
    with Ledger(ledger_path) as ledger:
        assert ledger.rows(batch_id) == before_rows
        # Only the refused preflight attempt was added to the audit trail (issue 5, fix 5).
        added = ledger.events()[before_events:]
        assert [(e["kind"], e["data"]["phase"], e["data"]["http_status"]) for e in added] == [
            ("attempt", "preflight", 401)
        ]
    assert sim_url


def test_an_unreachable_api_stops_with_exit_3(
    runner, csv_file, ledger_path, reports_dir, monkeypatch
):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OMI_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OMI_API_KEY", API_KEY)
    result = invoke(
        runner, "preview", csv_file, "--rate", "1000", *common(ledger_path, reports_dir)
    )
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1] == (
        "Error: OMI unreachable (connection_refused): connection refused, at "
        f"http://127.0.0.1:{port}/api/v3/agent/conversation/transfer: check OMI_BASE_URL "
        f"(http://127.0.0.1:{port}) and that this machine can reach it"
    )
    with Ledger(ledger_path) as ledger:
        assert ledger.batches() == []


def test_a_key_revoked_mid_execute_puts_the_row_back_and_stops(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator()
    stack = make_stack(server, concurrency=1)
    batch_id = stack.approved(csv_file)
    refused = {"status": 401, "body": {"instance_id": "stg", "status_code": -9999,
                                       "message": "api_key_invalid"}}  # fmt: skip
    sim.script(
        {"status": 200, "body": {"status_code": 9999, "payload": {"updatedRecords": 1}}}, refused
    )  # fmt: skip  (preflight ok, then the first execute is refused)
    from omi_batch.client import AuthError

    with pytest.raises(AuthError):
        stack.pipeline.execute(batch_id)
    rows = stack.ledger.rows(batch_id)
    assert {r["state"] for r in rows} == {"approved"}
    assert rows[0]["error"].startswith("not started: OMI refused the key: OMI answered 401")
    kinds = [e["kind"] for e in stack.ledger.events(batch_id) if e["row"] == 2]
    assert kinds[-2:] == ["submitted", "submit_refused"] or kinds[-3:-1] == ["submitted", "attempt"]


def test_the_results_report_says_an_approved_row_was_not_sent_yet(
    make_simulator, tmp_path, csv_file, make_stack
):
    # "skipped" alone read as left out on purpose, for rows a stopped run never sent.
    from omi_batch import reports
    from omi_batch.client import AuthError

    sim, server = make_simulator()
    stack = make_stack(server, concurrency=1)
    batch_id = stack.approved(csv_file)
    sim.script(
        {"status": 200, "body": {"status_code": 9999, "payload": {"updatedRecords": 1}}},
        {"status": 401, "body": {"status_code": -9999, "message": "api_key_invalid"}},
    )  # fmt: skip  (preflight ok, then the first execute is refused)
    with pytest.raises(AuthError):
        stack.pipeline.execute(batch_id)
    frame = reports.results_frame(stack.ledger.rows(batch_id))
    lines = {r["row"]: (r["status"], r["error"]) for r in frame.to_dict("records")}
    assert lines[2][0] == "skipped" and lines[2][1].startswith("not started: OMI refused the key")
    assert {lines[n] for n in lines if n != 2} == {
        ("skipped", f"approved, not sent yet: omi-batch execute {batch_id} sends it")
    }


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_execute_resumes_after_a_kill_and_never_resubmits_a_confirmed_row(
    runner, make_simulator, monkeypatch, tmp_path, csv_file, ledger_path, reports_dir, sig
):
    sim, server = make_simulator(faults=Faults(callback_delay=0.4))
    batch_id = approved_batch(tmp_path, server, csv_file)
    use_simulator(monkeypatch, server)
    code, stderr = execute_interrupted(batch_id, ledger_path, reports_dir, sig, cwd=tmp_path)
    with Ledger(ledger_path) as ledger:
        confirmed = {r["row"] for r in ledger.rows(batch_id, ["succeeded"])}
    if sig == signal.SIGINT:
        assert code == 130, stderr
        assert (
            f"Interrupted: state is saved; resume with: omi-batch execute {batch_id} --yes "
            f"--ledger {ledger_path} --reports {reports_dir} --listen 127.0.0.1:0"
        ) in stderr
    else:
        assert code == -signal.SIGKILL
    sent_before = execute_requests(sim)
    assert confirmed and all(sent_before[n] == 1 for n in confirmed)

    result = invoke(
        runner, "execute", batch_id, "--yes", *fast(), *common(ledger_path, reports_dir)
    )
    assert result.exit_code == 0, result.output
    sent = execute_requests(sim)
    with Ledger(ledger_path) as ledger:
        rows = ledger.rows(batch_id)
        assert {r["state"] for r in rows} == {"succeeded"}
        assert_honest(ledger, batch_id)
        reasons = {e["row"]: e["data"] for e in ledger.events(batch_id)
                   if e["kind"] == "resubmitted"}  # fmt: skip
    for number in confirmed:
        assert sent[number] == 1, f"confirmed row {number} was submitted again"
    for number, data in reasons.items():  # the intent was saved: the outcome is unknown
        assert number not in confirmed
        assert sent[number] == sent_before[number] + 1
        assert "its outcome is unknown" in data["reason"]
    assert set(reasons) >= {n for n in ROWS if sent_before[n] and n not in confirmed}
    assert all(sent[n] == sent_before[n] + 1 for n in ROWS if n not in confirmed)


# --------------------------------------------------------------------------- status, report


def test_status_json_lists_batches_and_one_batch_rows(
    runner, env, csv_file, ledger_path, reports_dir
):
    result = invoke(runner, "run", csv_file, "--yes", *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 0
    batch_id = batch_of(ledger_path)
    listing = json.loads(invoke(runner, "status", "--json", "--ledger", ledger_path).stdout)
    assert list(listing) == ["batches"]
    assert len(listing["batches"]) == 1
    entry = listing["batches"][0]
    assert {k: entry[k] for k in ("batch", "row_count", "state")} == {
        "batch": batch_id,
        "row_count": 5,
        "state": "succeeded",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["created_at"])
    one = json.loads(invoke(runner, "status", batch_id, "--json", "--ledger", ledger_path).stdout)
    assert {k: one[k] for k in ("batch", "row_count", "state")} == {
        "batch": batch_id,
        "row_count": 5,
        "state": "succeeded",
    }
    assert [list(r) for r in one["rows"]] == [[
        "row", "source_email", "target_email", "state", "request_id", "conversations_previewed",
        "updated_records"]] * 5  # fmt: skip
    assert [(r["row"], r["state"]) for r in one["rows"]] == [(n, "succeeded") for n in ROWS]
    assert all(r["request_id"] and r["updated_records"] is not None for r in one["rows"])


def test_status_of_an_unknown_batch_is_exit_2(runner, env, csv_file, ledger_path, reports_dir):
    invoke(runner, "preview", csv_file, *fast(), *common(ledger_path, reports_dir))
    result = invoke(runner, "status", "19990101-000000-abcd", "--ledger", ledger_path)
    assert result.exit_code == 2
    assert result.stderr == f"Error: no batch 19990101-000000-abcd in {ledger_path}\n"


def test_report_rewrites_the_same_reports_from_the_ledger(
    runner, env, csv_file, ledger_path, reports_dir, tmp_path
):
    result = invoke(runner, "run", csv_file, "--yes", *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 0
    batch_id = batch_of(ledger_path)
    again = tmp_path / "again"
    result = invoke(runner, "report", batch_id, "--ledger", ledger_path, "--reports", again)
    assert result.exit_code == 0
    for path in reports_dir.iterdir():
        if path.name.endswith(("-preview.csv", "-review.xlsx")):  # kept as preview wrote them
            assert (again / path.name).exists()  # (#10): their approved column differs
        elif path.suffix == ".xlsx":  # a zip stamps the time it was written: compare the cells
            assert sheets(again / path.name) == sheets(path), path.name
        else:
            assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def sheets(path: Path) -> dict[str, list[tuple]]:
    book = openpyxl.load_workbook(path)
    return {sheet.title: list(sheet.iter_rows(values_only=True)) for sheet in book.worksheets}


def test_retry_report_validates_and_runs(
    runner, make_simulator, monkeypatch, csv_file, ledger_path, reports_dir, tmp_path
):
    sim, server = make_simulator(faults=Faults(callback_error_rate=1.0))
    monkeypatch.setenv("OMI_BASE_URL", server.url)
    monkeypatch.setenv("OMI_API_KEY", API_KEY)
    monkeypatch.setenv("OMI_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.delenv("OMI_WEBHOOK_URL", raising=False)
    result = invoke(runner, "run", csv_file, "--yes", *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 1
    batch_id = batch_of(ledger_path)
    retry = reports_dir / f"{batch_id}-retry.csv"
    rows = read_report(retry)
    # Every row not done, in the input format and run order (the held catch-all row too).
    assert [(r["source_email"], r["target_email"], r["conv_ids"]) for r in rows] == [
        ("lan.nguyen@example.vn", "tuan.ho@example.vn", ""),
        ("bao.pham@example.vn", "mai.hoang@example.vn", VIP),
        ("bao.pham@example.vn", "anh.vu@example.vn", ""),
        ("hung.bui@example.vn", "ngoc.do@example.vn", ""),
        ("minh.tran@example.vn", "hong.le@example.vn", ""),
    ]
    assert invoke(runner, "validate", retry).exit_code == 0
    sim.faults.callback_error_rate = 0
    result = invoke(runner, "run", retry, "--yes", *fast(), *common(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    with Ledger(ledger_path) as ledger:
        (newest,) = [b["id"] for b in ledger.batches() if b["id"] != batch_id]
        assert {r["state"] for r in ledger.rows(newest)} == {"succeeded"}


# --------------------------------------------------------------------------- secrets


def test_no_secret_or_callback_token_is_printed_logged_stored_or_reported(
    runner, env, csv_file, ledger_path, reports_dir, caplog
):
    import logging

    caplog.set_level(logging.DEBUG)
    with csv_file.open("a", encoding="utf-8") as handle:
        handle.write(UNKNOWN_TARGET)
    outputs = []
    result = invoke(runner, "-vv", "run", csv_file, "--yes", *fast(),
                    *common(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 2, result.output  # the directory check caught row 7
    outputs += [result.stdout, result.stderr]
    result = invoke(runner, "-vv", "run", csv_file, "--yes", "--no-check-agents", *fast(),
                    *common(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 1, result.output  # row 7 failed its preview
    outputs += [result.stdout, result.stderr]
    batch_id = batch_of(ledger_path)
    for args in (["status", batch_id, "--json"], ["status"], ["report", batch_id]):
        extra = ["--reports", reports_dir] if args[0] == "report" else []
        result = invoke(runner, *args, "--ledger", ledger_path, *extra)
        outputs += [result.stdout, result.stderr]
    secrets = [API_KEY, WEBHOOK_SECRET] + [
        callbacks.token(Secret(WEBHOOK_SECRET), batch_id, row, phase)
        for row in [*ROWS, 7]
        for phase in callbacks.PHASES
    ]
    blobs = {"output": "\n".join(outputs), "log": caplog.text}
    for path in reports_dir.iterdir():
        if path.suffix == ".xlsx":  # the sheets' XML, unzipped
            with zipfile.ZipFile(path) as archive:
                blobs[path.name] = "".join(archive.read(n).decode() for n in archive.namelist())
        else:
            blobs[path.name] = path.read_text(encoding="utf-8-sig")
    for suffix in ("", "-wal", ".head"):
        path = Path(f"{ledger_path}{suffix}")
        if path.exists():
            blobs[path.name] = path.read_bytes().decode("latin-1")
    assert len(blobs) >= 6
    for name, text in blobs.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in {name}"


@pytest.mark.parametrize(
    "states, word",
    [
        ({}, "empty"),
        ({"planned": 2, "previewed": 1}, "planned"),
        ({"previewed": 2, "preview_failed": 1}, "previewed"),
        ({"approved": 1, "succeeded": 1}, "approved"),
        ({"submitted": 1, "succeeded": 1}, "executing"),
        ({"succeeded": 3, "unconfirmed": 1, "failed": 1}, "unconfirmed"),
        ({"succeeded": 2, "failed": 1, "skipped": 1}, "failed"),
        ({"succeeded": 2, "skipped": 1}, "succeeded"),
        # #10 item 8: every approved row succeeded, whatever was skipped or failed its preview
        ({"succeeded": 5, "preview_failed": 1}, "succeeded"),
        ({"succeeded": 3, "preview_failed": 1, "skipped": 1}, "succeeded"),
        ({"succeeded": 3, "approved": 1, "failed": 1}, "failed"),  # held behind a failed row
        ({"preview_failed": 3}, "failed"),  # nothing can be approved
        ({"cancelled": 5}, "cancelled"),
    ],
)
def test_a_batch_state_never_hides_a_failed_or_unconfirmed_row(states, word):
    from omi_batch.states import batch_state

    assert batch_state(states) == word


def test_a_batch_with_a_submitted_row_and_nobody_running_it_reads_interrupted():
    from omi_batch.states import batch_state

    states = {"submitted": 1, "succeeded": 1}
    assert batch_state(states, running=False) == "interrupted"
    assert batch_state(states, running=True) == "executing"
    assert batch_state(states, running=None) == "executing"  # the lock could not be asked


def test_run_json_prints_the_batch_as_status_does_plus_its_reports(
    runner, env, csv_file, ledger_path, reports_dir
):
    result = invoke(
        runner, "run", csv_file, "--yes", "--json", *fast(), *common(ledger_path, reports_dir)
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    batch_id = batch_of(ledger_path)
    status = json.loads(
        invoke(runner, "status", batch_id, "--json", "--ledger", ledger_path).stdout
    )
    assert {k: v for k, v in data.items() if k != "reports"} == status
    assert data["reports"] == {
        **{kind: str(reports_dir / f"{batch_id}-{kind}.csv")
           for kind in ("preview", "targets", "results", "retry")},
        "review_xlsx": str(reports_dir / f"{batch_id}-review.xlsx"),
        "results_xlsx": str(reports_dir / f"{batch_id}-results.xlsx"),
    }  # fmt: skip
    assert data["state"] == "succeeded"


def test_a_webhook_url_without_its_secret_is_named_and_rows_end_unconfirmed(
    runner, env, monkeypatch, csv_file, ledger_path, reports_dir
):
    monkeypatch.setenv("OMI_WEBHOOK_URL", "https://hooks.example.vn/omi")
    monkeypatch.delenv("OMI_WEBHOOK_SECRET")
    result = invoke(
        runner, "run", csv_file, "--yes", "--rate", "1000", *common(ledger_path, reports_dir)
    )
    assert result.exit_code == 1
    assert (
        "Warning: OMI_WEBHOOK_URL is set but OMI_WEBHOOK_SECRET is not, so no callback can be "
        "checked: transfers will end unconfirmed."
    ) in result.stderr
    with Ledger(ledger_path) as ledger:
        states = {r["state"] for r in ledger.rows(batch_of(ledger_path))}
    assert "succeeded" not in states and "unconfirmed" in states


def test_a_run_leaves_no_connection_of_its_worker_threads_open(
    make_simulator, csv_file, make_stack
):
    # Before: every worker thread of each phase, and every committer thread, kept its SQLite
    # connection open until the ledger was closed.
    sim, server = make_simulator()
    stack = make_stack(server, concurrency=4)
    batch_id = stack.run(csv_file)
    assert {r["state"] for r in stack.ledger.rows(batch_id)} == {"succeeded"}
    assert all(thread.is_alive() for _, thread, _ in stack.ledger._connections)
    # this thread's, the receiver's writer's and at most a committer still lingering
    assert len(stack.ledger._connections) <= 3
