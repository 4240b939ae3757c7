"""Reviewing a batch in Excel: what the operator approved in the preview report is exactly what
runs, and the report never loses the operator's decisions (issue #10, items 1, 3, 4 and 6).

Every test drives the command line against the simulator over loopback HTTP, with a real
ledger file, on rows 2-6 of the sample file the README uses (data/sample_offboarding.csv: row 4
routes bao.pham's 2 VIP conversations to mai.hoang, row 5 takes "all the rest" of them to
anh.vu). A row that failed its preview is made so in the ledger (preview_failed, as a preview
refused by OMI leaves it), so the tests do not depend on which agents OMI's directory knows.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from helpers import (
    FAST,
    SAMPLE,
    SAMPLE_TEXT,
    UNKNOWN,
    departures_csv,
    fail_preview,
    invoke,
    read_report,
    transfers,
    where,
)

from omi_batch.ledger import Ledger

assert "bao.pham@example.vn,anh.vu@example.vn,false,," in SAMPLE_TEXT
PREVIEW_COLUMNS = [
    "batch", "row", "source_email", "target_email", "conv_ids", "replace_existing_members",
    "scope", "conversations", "tickets", "preview_status", "error", "warnings", "note",
    "approved",
]  # fmt: skip
CHAIN = (
    "chain: minh.tran@example.vn is leaving too (row 3), so this transfer goes to "
    "hong.le@example.vn via minh.tran@example.vn"
)


# --------------------------------------------------------------------------- helpers


def write_report(path: Path, rows: list[dict]) -> Path:
    """Save report rows the way Excel's "CSV UTF-8" does (BOM, CRLF)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8-sig", newline="")
    return path


def preview(runner, ledger_path, reports_dir, file) -> tuple[str, Path]:
    """Preview ``file``: (batch id, path of its preview report)."""
    result = invoke(runner, "preview", file, *FAST, *where(ledger_path, reports_dir))
    assert result.exit_code in (0, 1), result.output
    batch_id = result.stdout.strip().splitlines()[-1]
    return batch_id, reports_dir / f"{batch_id}-preview.csv"


def execute(runner, ledger_path, reports_dir, batch_id: str):
    """``execute BATCH --yes`` with a receiver of its own."""
    return invoke(runner, "execute", batch_id, "--yes", *FAST, *where(ledger_path, reports_dir))


@pytest.fixture
def sim(env):
    """The simulator the commands talk to (``env`` points OMI_* at it)."""
    return env[0]


@pytest.fixture
def previewed(runner, env, departures, ledger_path, reports_dir) -> tuple[str, Path]:
    """The sample's rows 2-6 previewed against the simulator: (batch id, its preview report)."""
    return preview(runner, ledger_path, reports_dir, departures)


def mark(rows: list[dict], approved: dict[int, str]) -> list[dict]:
    for r in rows:
        r["approved"] = approved.get(int(r["row"].lstrip("'")), "")
    return rows


def approve_edited(runner, ledger_path, tmp_path, batch_id: str, rows: list[dict]):
    """``approve BATCH --report`` with ``rows`` saved as a person's edited report."""
    edited = write_report(tmp_path / "approved.csv", rows)
    return invoke(runner, "approve", batch_id, "--report", edited, "--ledger", ledger_path)


def states(ledger_path, batch_id) -> dict[int, str]:
    with Ledger(ledger_path) as ledger:
        return {r["row"]: r["state"] for r in ledger.rows(batch_id)}


def approve_leaves_out(runner, ledger_path, batch_id: str, how: list, said: str,
                       after: dict[int, str]) -> None:  # fmt: skip
    """``approve BATCH HOW`` succeeds, says ``said`` of the rows it leaves out, and leaves the
    rows in the states ``after``."""
    result = invoke(runner, "approve", batch_id, *how, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert said in result.stderr
    assert states(ledger_path, batch_id) == after


# --------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("how", ["left empty", "deleted from the report"])
def test_approving_a_catch_all_without_its_conv_ids_row_is_refused_naming_both(
    runner, ledger_path, tmp_path, how, previewed
):
    batch_id, path = previewed
    rows = mark(read_report(path), {5: "yes"})
    if how == "deleted from the report":
        rows = [r for r in rows if r["row"] != "4"]
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 2, result.output
    assert (
        "row 5 (bao.pham@example.vn → anh.vu@example.vn, all the other conversations) is "
        "approved but row 4 of the same source (2 conversations to mai.hoang@example.vn) is "
        "not: OMI cannot leave conversations out of a transfer, so row 5 would move those 2 "
        "conversations to anh.vu@example.vn too; approve row 4 too, or clear row 5"
    ) in result.stderr
    assert "nothing was approved" in result.stderr
    assert set(states(ledger_path, batch_id).values()) <= {"previewed", "preview_failed"}


def test_approving_both_rows_of_a_split_source_is_accepted(
    runner, ledger_path, tmp_path, previewed
):
    batch_id, path = previewed
    result = approve_edited(
        runner, ledger_path, tmp_path, batch_id, mark(read_report(path), {4: "yes", 5: "yes"})
    )
    assert result.exit_code == 0, result.output
    assert states(ledger_path, batch_id)[4] == states(ledger_path, batch_id)[5] == "approved"


def test_approve_all_leaves_out_a_catch_all_whose_conv_ids_row_failed_its_preview(
    runner, ledger_path, tmp_path, previewed
):
    batch_id, _ = previewed
    fail_preview(ledger_path, batch_id, 4)
    approve_leaves_out(
        runner, ledger_path, batch_id, ["--all"],
        "row 5 is not approved: row 4 of the same source failed its preview, and row 5 would "
        "move its conversations too",
        {2: "approved", 3: "approved", 4: "preview_failed", 5: "previewed", 6: "approved"},
    )  # fmt: skip


def test_execute_holds_a_catch_all_whose_conv_ids_row_was_not_approved(
    runner, sim, ledger_path, reports_dir, previewed
):
    batch_id, _ = previewed
    # A ledger approved that way by hand or by an older version: execute must still hold row 5.
    with Ledger(ledger_path) as ledger:
        ledger.approve(batch_id, approve=[5], skip=[2, 3, 4, 6], by="someone", how="by hand")
    result = execute(runner, ledger_path, reports_dir, batch_id)
    assert result.exit_code == 1, result.output
    assert transfers(sim, preview=False)[("bao.pham@example.vn", "anh.vu@example.vn")] == 0
    with Ledger(ledger_path) as ledger:
        row = ledger.row(batch_id, 5)
    assert row["state"] == "approved"
    assert row["error"] == "held: row 4 of the same source is skipped"
    assert row["held_by"] == 4


def test_filling_yes_down_onto_a_row_that_failed_its_preview_says_which_row_to_clear(
    runner, ledger_path, tmp_path, previewed
):
    batch_id, _ = previewed
    fail_preview(ledger_path, batch_id, 6)
    invoke(runner, "report", batch_id, "--ledger", ledger_path, "--reports", tmp_path / "again")
    rows = mark(read_report(tmp_path / "again" / f"{batch_id}-preview.csv"),
                dict.fromkeys(range(2, 7), "yes"))  # fmt: skip
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 2, result.output
    assert (
        f"row 6 failed its preview ({UNKNOWN}), so it cannot be approved: clear row 6's "
        "approved cell"
    ) in result.stderr
    assert "no longer matches" not in result.stderr
    assert set(states(ledger_path, batch_id).values()) <= {"previewed", "preview_failed"}


# --------------------------------------------------------------------------- item 3


def test_the_preview_report_names_its_batch_on_every_row(previewed):
    batch_id, path = previewed
    rows = read_report(path)
    assert list(rows[0]) == PREVIEW_COLUMNS
    assert {r["batch"] for r in rows} == {batch_id}


def test_approve_refuses_the_report_of_another_batch(
    runner, env, departures, ledger_path, reports_dir, tmp_path
):
    first, _ = preview(runner, ledger_path, reports_dir, departures)
    second, path = preview(runner, ledger_path, reports_dir, departures)
    edited = write_report(tmp_path / "approved.csv", mark(read_report(path), {2: "yes"}))
    result = invoke(runner, "approve", first, "--report", edited, "--ledger", ledger_path)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: approved.csv is the preview report of batch {second}, not of batch {first}: "
        "nothing was approved\n"
    )
    assert set(states(ledger_path, first).values()) <= {"previewed", "preview_failed"}


@pytest.mark.parametrize(
    "column,value,was",
    [("replace_existing_members", "false", "true"), ("conversations", "1", "2"),
     ("target_email", "hong.le@example.vn", "mai.hoang@example.vn")],
)  # fmt: skip
def test_approve_refuses_a_changed_cell_it_cannot_honour_naming_the_row(
    runner, ledger_path, tmp_path, column, value, was, previewed
):
    batch_id, path = previewed
    rows = mark(read_report(path), {4: "yes", 5: "yes"})
    rows[2][column] = value  # row 4
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 2, result.output
    assert (
        f"row 4: {column} is {value!r} in the report but {was!r} in the ledger: approve records "
        "only the approved and note columns"
    ) in result.stderr
    assert set(states(ledger_path, batch_id).values()) <= {"previewed", "preview_failed"}


def test_approve_keeps_an_edited_note_and_an_excel_upper_case_boolean(
    runner, ledger_path, tmp_path, previewed
):
    batch_id, path = previewed
    rows = mark(read_report(path), {4: "yes", 5: "yes"})
    rows[2]["note"] = "checked with Mai"
    rows[2]["replace_existing_members"] = "TRUE"  # Excel upper-cases a boolean it opened
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 2 row(s) approved, 3 skipped." in result.stderr


def test_rows_deleted_from_the_report_are_not_approved_and_named(
    runner, ledger_path, tmp_path, previewed
):
    batch_id, path = previewed
    rows = [r for r in mark(read_report(path), {2: "yes", 3: "yes"}) if r["row"] not in ("4", "6")]
    edited = write_report(tmp_path / "approved.csv", rows)
    approve_leaves_out(
        runner, ledger_path, batch_id, ["--report", edited],
        "2 rows not in the report: 4, 6 (not approved)",
        {2: "approved", 3: "approved", 4: "previewed", 5: "skipped", 6: "previewed"},
    )  # fmt: skip


# --------------------------------------------------------------------------- item 4


def test_execute_before_approve_keeps_the_yes_typed_into_the_preview_report(
    runner, sim, ledger_path, reports_dir, previewed
):
    batch_id, path = previewed
    write_report(path, mark(read_report(path), {2: "yes", 3: "yes"}))  # edited in place
    typed = path.read_bytes()
    result = execute(runner, ledger_path, reports_dir, batch_id)
    assert result.exit_code == 2, result.output
    assert (
        f"batch {batch_id} has no approved row, so nothing was sent: approve first: "
        f"omi-batch approve {batch_id} --report {path}"
    ) in result.stderr
    assert path.read_bytes() == typed
    assert sum(transfers(sim, preview=False).values()) == 0
    result = invoke(runner, "approve", batch_id, "--report", path, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 2 row(s) approved, 3 skipped." in result.stderr


def test_execute_and_report_leave_an_edited_preview_report_as_it_is(
    runner, ledger_path, reports_dir, previewed
):
    batch_id, path = previewed
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    rows = read_report(path)
    rows[0]["note"] = "my own remark"
    write_report(path, rows)
    typed = path.read_bytes()
    result = execute(runner, ledger_path, reports_dir, batch_id)
    assert result.exit_code == 0, result.output
    assert invoke(runner, "report", batch_id, *where(ledger_path, reports_dir)).exit_code == 0
    assert path.read_bytes() == typed
    assert (reports_dir / f"{batch_id}-results.csv").exists()


# --------------------------------------------------------------------------- item 6


def test_preview_prints_the_warnings_and_puts_them_beside_their_row(
    runner, departures, ledger_path, reports_dir, previewed
):
    batch_id, path = previewed
    rows = {int(r["row"]): r for r in read_report(path)}
    assert rows[2]["warnings"] == CHAIN
    assert {n: r["warnings"] for n, r in rows.items() if n != 2} == dict.fromkeys(range(3, 7), "")
    result = invoke(runner, "preview", departures, *FAST, *where(ledger_path, reports_dir))
    assert f"Warning: row 2: {CHAIN}" in result.stderr


def test_preview_report_shows_a_shared_split_warning_on_the_conv_ids_row(
    runner, env, departures, ledger_path, reports_dir, tmp_path
):
    text = SAMPLE_TEXT.replace("mai.hoang@example.vn,true,", "mai.hoang@example.vn,false,")
    departures.write_text(text, encoding="utf-8")
    result = invoke(runner, "preview", departures, *FAST, *where(ledger_path, reports_dir))
    batch_id = result.stdout.strip().splitlines()[-1]
    warning = re.search(r"Warning: row 4: (shared_split: .*)", result.stderr)
    assert warning, result.stderr
    rows = {int(r["row"]): r for r in read_report(reports_dir / f"{batch_id}-preview.csv")}
    assert rows[4]["warnings"] == warning.group(1)


# --------------------------------------------------------------------------- deleted columns

# Rows 2-7 of the sample: row 7 (tuan.ho, scope=both) moves tickets too.
WITH_TICKETS = "".join(SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:7])


def deleted_columns_refusal(name: str, batch_id: str, columns: list[str]) -> str:
    them = "it" if len(columns) == 1 else "them"
    return (
        f"Error: {name} has no column {', '.join(columns)}: the preview report of batch "
        f"{batch_id} was written with {them}, and approve takes a report only with every column "
        "it was written with (it records only the approved and note cells); nothing was "
        "approved\n"
    )


def without(rows: list[dict], columns: list[str]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


@pytest.mark.parametrize(
    "columns",
    [["conversations"], ["tickets"], ["scope"], ["warnings"], ["preview_status"], ["error"],
     ["note"], ["conversations", "warnings"]],
)  # fmt: skip
def test_approve_refuses_a_report_whose_column_was_deleted_naming_it(
    runner, ledger_path, tmp_path, columns, previewed
):
    batch_id, path = previewed
    rows = without(mark(read_report(path), dict.fromkeys(range(2, 7), "yes")), columns)
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 2, result.output
    assert result.stderr == deleted_columns_refusal("approved.csv", batch_id, columns)
    assert set(states(ledger_path, batch_id).values()) == {"previewed"}


def test_a_batch_that_moves_tickets_needs_its_scope_and_tickets_columns(
    runner, env, tmp_path, ledger_path, reports_dir
):
    batch_id, path = preview(runner, ledger_path, reports_dir,
                             departures_csv(tmp_path, WITH_TICKETS))  # fmt: skip
    rows = without(mark(read_report(path), dict.fromkeys(range(2, 8), "yes")), ["scope", "tickets"])
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 2, result.output
    assert result.stderr == deleted_columns_refusal("approved.csv", batch_id, ["scope", "tickets"])
    assert set(states(ledger_path, batch_id).values()) == {"previewed"}


def test_a_report_from_before_tickets_is_still_taken_for_a_batch_without_tickets(
    runner, ledger_path, tmp_path, previewed
):
    """omi-batch wrote the preview report without ``scope`` and ``tickets`` before tickets
    moved (#15): a batch moving none may come back in that form."""
    batch_id, path = previewed
    rows = without(mark(read_report(path), {2: "yes", 3: "yes"}), ["scope", "tickets"])
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 2 row(s) approved, 3 skipped." in result.stderr


def test_approve_takes_a_report_with_columns_added_and_reordered_and_emails_in_capitals(
    runner, ledger_path, tmp_path, previewed
):
    batch_id, path = previewed
    rows = mark(read_report(path), {2: "yes", 3: "yes"})
    order = ["comment", *reversed(list(rows[0]))]
    for r in rows:
        r["comment"] = "checked by HR"
        r["source_email"] = r["source_email"].upper()
    rows = [{column: r[column] for column in order} for r in rows]
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, rows)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 2 row(s) approved, 3 skipped." in result.stderr


@pytest.mark.parametrize(("marks", "warned"), [({2: "yes", 3: "no"}, True),
                                               ({2: "yes", 3: "yes"}, False)])  # fmt: skip
def test_approving_a_row_sent_on_through_a_chain_without_its_link_is_told(
    runner, ledger_path, tmp_path, previewed, marks, warned
):
    """Row 2 (lan → minh) goes to hong via minh, who leaves in row 3 (minh → hong): with row
    3 not approved, minh may stay, yet lan's conversations go past him: approve says so."""
    batch_id, path = previewed
    result = approve_edited(runner, ledger_path, tmp_path, batch_id, mark(read_report(path), marks))
    assert result.exit_code == 0, result.output
    warning = (
        "Warning: row 2 goes to hong.le@example.vn via minh.tran@example.vn, who leaves too in "
        "row 3, but row 3 is not approved: if minh.tran@example.vn stays, the conversations "
        "still go to hong.le@example.vn; approve row 3 too, or move row 2 to a new file with "
        "minh.tran@example.vn as the target\n"
    )
    assert (warning in result.stderr) == warned, result.stderr


def test_skipping_a_chains_link_approved_before_is_told_too(
    runner, ledger_path, tmp_path, previewed
):
    batch_id, path = previewed
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    result = approve_edited(
        runner, ledger_path, tmp_path, batch_id, mark(read_report(path), {2: "yes", 3: "no"})
    )
    assert result.exit_code == 0, result.output
    assert "Warning: row 2 goes to hong.le@example.vn via minh.tran@example.vn" in result.stderr
