"""The reports of a batch that moves tickets too (issue 15): one line per row of the input
file, its conversations and tickets side by side, a status and figures per kind, and a retry
report that keeps the scope of what is left to do."""

from __future__ import annotations

import openpyxl
import pytest
from helpers import BOTH, CONVERSATIONS, TICKETS_ONLY

from omi_batch import reports, workbook

PERMISSION = "OMI answered 200 permission_denied: your key lacks the permission to assign other "


def step(led, batch, row, kind, *states, **fields):
    for state in states:
        led.record_step(batch, row, state=state, event=state, kind=kind,
                        **(fields if state == states[-1] else {}))  # fmt: skip


@pytest.fixture
def batch(led):
    batch = led.create_batch(source_file="departures.csv", source_sha256="ab" * 32,
                             created_by="hr", base_url="http://127.0.0.1:9", options={},
                             input_rows=3, warnings=[],
                             rows=[BOTH, TICKETS_ONLY, CONVERSATIONS])  # fmt: skip
    step(led, batch, 2, "conversations", "previewed", conversations_previewed=12)
    step(led, batch, 2, "tickets", "previewed", conversations_previewed=2)
    step(led, batch, 3, "tickets", "previewed", conversations_previewed=3)
    step(led, batch, 4, "conversations", "preview_failed", preview_error="no such agent")
    return batch


def done(led, batch):
    """Row 2's conversations succeeded (12), its tickets failed on the permission; row 3's
    tickets are unconfirmed."""
    led.approve(batch, approve=[2, 3], by="hr", how="all")
    step(led, batch, 2, "conversations", "submitted", "succeeded", request_id="r-2c",
         updated_records=12)  # fmt: skip
    step(led, batch, 2, "tickets", "submitted", "failed", request_id="r-2t",
         error=PERMISSION + "agents' tickets")  # fmt: skip
    step(led, batch, 3, "tickets", "submitted", "unconfirmed", request_id="r-3t",
         error="no callback within 5 s")  # fmt: skip


def test_the_preview_report_shows_conversations_and_tickets_side_by_side(led, batch):
    frame = reports.preview_frame(led.rows(batch), [])

    lines = frame.set_index("row")
    assert list(lines.index) == [2, 3, 4]
    assert list(lines["scope"]) == ["both", "tickets", "conversations"]
    assert [None if v is reports.pd.NA else int(v) for v in lines["conversations"]] == [
        12, None, None]  # fmt: skip
    assert [None if v is reports.pd.NA else int(v) for v in lines["tickets"]] == [2, 3, None]
    assert list(lines["preview_status"]) == ["previewed", "previewed", "preview_failed"]
    assert lines.loc[4, "error"] == "no such agent"


def test_a_ticket_preview_that_failed_is_named_as_such_in_the_preview_report(led, batch):
    led.record_step(batch, 2, state="preview_failed", event="preview_failed", kind="tickets",
                    preview_error="permission_denied")  # fmt: skip

    line = reports.preview_frame(led.rows(batch), []).set_index("row").loc[2]

    assert (line["preview_status"], line["error"]) == ("preview_failed",
                                                       "tickets: permission_denied")  # fmt: skip
    assert int(line["conversations"]) == 12


def test_the_results_report_has_a_status_and_figures_per_kind(led, batch):
    done(led, batch)

    frame = reports.results_frame(led.rows(batch), "h" * 64).set_index("row")

    two = frame.loc[2]
    assert (two["status"], two["conversations_status"], two["tickets_status"]) == (
        "failed", "succeeded", "failed")  # fmt: skip
    assert (int(two["conversations_previewed"]), int(two["updated_records"])) == (12, 12)
    assert (two["request_id"], two["tickets_request_id"]) == ("r-2c", "r-2t")
    assert int(two["tickets_previewed"]) == 2 and two["tickets_moved"] is reports.pd.NA
    assert two["tickets_error"] == PERMISSION + "agents' tickets" and two["error"] == ""
    three = frame.loc[3]
    assert (three["status"], three["conversations_status"], three["tickets_status"]) == (
        "unconfirmed", "", "unconfirmed")  # fmt: skip
    assert three["conversations_previewed"] is reports.pd.NA and three["request_id"] == ""
    assert frame.loc[4, "status"] == "preview_failed"
    assert list(frame.columns) == [c for c in reports.RESULTS_COLUMNS if c != "row"]


def test_the_retry_report_keeps_the_scope_of_what_is_left(led, batch):
    done(led, batch)

    frame = reports.retry_frame(led.rows(batch))

    assert list(frame.columns) == reports.RETRY_COLUMNS
    assert frame.to_dict("records") == [
        {"source_email": "tuan.ho@example.vn", "target_email": "hanh.ngo@example.vn",
         "replace_existing_members": "false", "conv_ids": "", "scope": "tickets",
         "note": f"retry of {batch} row 2 (tickets failed: {PERMISSION}agents' tickets)"},
        {"source_email": "an.nguyen@example.vn", "target_email": "hanh.ngo@example.vn",
         "replace_existing_members": "false", "conv_ids": "", "scope": "tickets",
         "note": f"retry of {batch} row 3 (unconfirmed: no callback within 5 s)"},
        {"source_email": "chi.le@example.vn", "target_email": "hanh.ngo@example.vn",
         "replace_existing_members": "false", "conv_ids": "", "scope": "conversations",
         "note": f"retry of {batch} row 4 (preview_failed: no such agent)"},
    ]  # fmt: skip


def test_the_summary_line_counts_rows_and_says_how_many_tickets_moved(led, batch):
    done(led, batch)
    step(led, batch, 3, "tickets", "succeeded", updated_records=3)

    line = reports.summary_line(batch, led.rows(batch))

    assert line == (f"Batch {batch}: 1 row succeeded, 1 failed, 0 unconfirmed, 0 skipped, 1 "
                    "failed its preview; 12 conversations and 3 tickets moved.")  # fmt: skip
    targets = reports.targets_frame(led.rows(batch), moved=True)
    assert targets.to_dict("records") == [
        {"target_email": "hanh.ngo@example.vn", "sources": "tuan.ho@example.vn",
         "conversations": 12, "moved": 12}]  # fmt: skip


def test_the_workbooks_show_tickets_beside_conversations(led, batch, tmp_path):
    info = led.batch(batch)
    review = workbook.write_review_workbook(led.rows(batch), info, tmp_path / "review.xlsx")
    done(led, batch)
    results = workbook.write_results_workbook(led.rows(batch), info, tmp_path / "results.xlsx")

    sheet = openpyxl.load_workbook(review)["Review"]
    header = [c.value for c in sheet[1]]
    lines = {line[1].value: dict(zip(header, (c.value for c in line), strict=True))
             for line in sheet.iter_rows(2)}  # fmt: skip
    assert sorted(lines) == [2, 3, 4]
    assert (lines[2]["conversations"], lines[2]["tickets"], lines[3]["tickets"]) == (12, 2, 3)
    about = openpyxl.load_workbook(review)["About"]
    facts = {r[0].value: r[1].value for r in about.iter_rows() if r[0].value}
    assert facts["Ticket sẽ chuyển\nTickets to move"] == 5
    book = openpyxl.load_workbook(results)
    header = [c.value for c in book["Results"][1]]
    assert header == reports.RESULTS_COLUMNS
    statuses = [line[header.index("tickets_status")].value for line in book["Results"].iter_rows(2)]
    assert statuses == ["failed", "unconfirmed", None]
