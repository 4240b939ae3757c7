"""The review and results workbooks as a reviewer meets them: a real preview over loopback HTTP
against the simulator, a real ledger, the workbook opened with openpyxl the way Excel would see
it, edited the way a person would, and read back by ``approve --report FILE.xlsx``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import openpyxl
import pytest

from omi_batch import workbook
from omi_batch.cli import cli
from omi_batch.ledger import Ledger
from omi_batch.reports import RESULTS_COLUMNS

VIP = "6a92a56ca95c2c0b07465834;6ac43424980ae047cc1ebe17"
# Rows 2-6 preview ok; row 7 names an agent OMI does not know; row 8 repeats row 6 (a warning,
# kept once); row 9 sends to an agent who is leaving too (a chain: a warning on rows 4 and 9).
# The commands here run with --no-check-agents so that row 7 reaches its preview, which fails:
# the workbook's look of a failed row is what these tests are about.
CSV = f"""source_email,target_email,replace_existing_members,conv_ids,note
lan.nguyen@example.vn,tuan.ho@example.vn,false,,=HYPERLINK("http://x")
bao.pham@example.vn,mai.hoang@example.vn,true,{VIP},Phạm Quốc Bảo: 2 khách VIP
bao.pham@example.vn,anh.vu@example.vn,false,,+84 912 345 678
hung.bui@example.vn,ngoc.do@example.vn,true,,-5 ngày phép
minh.tran@example.vn,hong.le@example.vn,false,,@SUM(A1:A9)
thu.dang@example.vn,long.ly@example.vn,false,,no OMI account yet
minh.tran@example.vn,hong.le@example.vn,false,,@SUM(A1:A9)
anh.vu@example.vn,lan.nguyen@example.vn,false,,Vũ Hoàng Anh nghỉ việc
"""
FAILED_ROW = 7
FAILED_FILL = "FFF8CBAD"


def invoke(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def batch(runner, env, tmp_path, ledger_path, reports_dir):
    """A previewed batch: ``(batch id, its ledger rows, its batch record)``."""
    source = tmp_path / "departures.csv"
    source.write_text(CSV, encoding="utf-8")
    result = invoke(runner, "preview", source, "--no-check-agents", "--rate", "1000", "--listen",
                    "127.0.0.1:0", "--wait", "5", "--ledger", ledger_path, "--reports",
                    reports_dir)  # fmt: skip
    assert result.exit_code == 1, result.output  # row 7 failed its preview
    batch_id = result.stdout.strip()
    with Ledger(ledger_path) as ledger:
        return batch_id, ledger.rows(batch_id), ledger.batch(batch_id)


def test_preview_writes_the_review_workbook_beside_the_csv_reports(
    runner, env, tmp_path, ledger_path, reports_dir
):
    source = tmp_path / "departures.csv"
    source.write_text(CSV, encoding="utf-8")
    result = invoke(runner, "preview", source, "--no-check-agents", "--rate", "1000", "--listen",
                    "127.0.0.1:0", "--wait", "5", "--ledger", ledger_path, "--reports",
                    reports_dir)  # fmt: skip
    batch_id = result.stdout.strip()
    book = reports_dir / f"{batch_id}-review.xlsx"
    assert sorted(p.name for p in reports_dir.iterdir()) == [
        f"{batch_id}-preview.csv", book.name, f"{batch_id}-targets.csv"]  # fmt: skip
    assert result.stderr.count(str(book)) == 1  # in the Next line only: no path twice (#10)
    assert (f"Next: fill the `approved` column of {book.name} (or of the preview CSV), then "
            f"omi-batch approve {batch_id} --report {book}") in result.stderr  # fmt: skip
    lines = by_row(openpyxl.load_workbook(book)["Review"])
    assert sorted(lines) == [2, 3, 4, 5, 6, 7, 9]


@pytest.fixture
def review(batch, tmp_path):
    """The review workbook of ``batch``: ``(path, batch id, rows by row number)``."""
    batch_id, rows, info = batch
    path = workbook.write_review_workbook(rows, info, tmp_path / "book" / f"{batch_id}-review.xlsx")
    return path, batch_id, {r["row"]: r for r in rows}


def table(sheet) -> list[list]:
    return [list(line) for line in sheet.iter_rows(values_only=True)]


def by_row(sheet) -> dict[int, dict]:
    """The Review sheet's lines as ``{row number: {column: cell}}``."""
    header = [c.value for c in sheet[1]]
    return {line[1].value: dict(zip(header, line, strict=True)) for line in sheet.iter_rows(2)}


def test_review_workbook_has_the_preview_columns_and_the_three_sheets(review):
    path, batch_id, rows = review
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Review", "Targets", "About"]
    sheet = book["Review"]
    assert [c.value for c in sheet[1]] == workbook.REVIEW_COLUMNS
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:N{len(rows) + 1}"
    lines = by_row(sheet)
    assert sorted(lines) == [2, 3, 4, 5, 6, 7, 9]
    assert {n: line["batch"].value for n, line in lines.items()} == dict.fromkeys(lines, batch_id)
    assert lines[3]["conv_ids"].value == VIP
    assert lines[3]["conversations"].value == rows[3]["conversations_previewed"]
    assert lines[FAILED_ROW]["preview_status"].value == "preview_failed"
    assert lines[FAILED_ROW]["conversations"].value is None
    assert lines[FAILED_ROW]["error"].value == rows[FAILED_ROW]["preview_error"]
    assert lines[4]["note"].value == (
        "+84 912 345 678 · via anh.vu@example.vn → lan.nguyen@example.vn "
        "(requested anh.vu@example.vn)"
    )


def test_only_the_approved_cells_of_approvable_rows_can_be_edited(review):
    path, _, rows = review
    sheet = openpyxl.load_workbook(path)["Review"]
    assert sheet.protection.sheet is True
    assert not sheet.protection.password  # against accidents, not a lock without a key
    assert sheet.protection.autoFilter is False  # filtering stays allowed while protected
    unlocked = {
        (cell.row, sheet.cell(1, cell.column).value)
        for line in sheet.iter_rows()
        for cell in line
        if not cell.protection.locked
    }
    approvable = [n for n, r in rows.items() if r["state"] != "preview_failed"]
    lines = by_row(sheet)
    assert unlocked == {(lines[n]["approved"].row, "approved") for n in approvable}


def test_approved_is_a_yes_no_dropdown(review):
    path, _, rows = review
    sheet = openpyxl.load_workbook(path)["Review"]
    [validation] = sheet.data_validations.dataValidation
    assert validation.type == "list"
    assert validation.formula1 == '"yes,no"'
    assert validation.allow_blank is True
    assert validation.showErrorMessage is True
    assert str(validation.sqref) == f"N2:N{len(rows) + 1}"


def test_ids_emails_and_formula_looking_text_are_stored_as_text(review):
    path, _, rows = review
    sheet = openpyxl.load_workbook(path)["Review"]
    lines = by_row(sheet)
    for n, line in lines.items():
        for column in ("batch", "source_email", "target_email", "conv_ids", "note"):
            cell = line[column]
            if cell.value is not None:
                assert (cell.data_type, cell.number_format) == ("s", "@"), (n, column)
    notes = {n: lines[n]["note"].value for n in (2, 5, 6)}
    assert notes == {2: '=HYPERLINK("http://x")', 5: "-5 ngày phép", 6: "@SUM(A1:A9)"}
    with zipfile.ZipFile(path) as archive:
        sheets = [n for n in archive.namelist() if n.startswith("xl/worksheets/sheet")]
        xml = "".join(archive.read(n).decode("utf-8") for n in sheets)
    assert "<f>" not in xml and "<f " not in xml  # no formula anywhere in the workbook


def test_ids_that_look_like_numbers_or_dates_stay_text(batch, tmp_path):
    batch_id, rows, info = batch
    odd = ["00123", "1e5", "2026-12-01", "3/4", "12345678901234567890"]
    rows = [dict(rows[0], conv_ids=odd)] + rows[1:]
    path = workbook.write_review_workbook(rows, info, tmp_path / "odd.xlsx")
    cell = by_row(openpyxl.load_workbook(path)["Review"])[rows[0]["row"]]["conv_ids"]
    assert (cell.value, cell.data_type) == (";".join(odd), "s")


def test_vietnamese_text_and_header_notes_survive(review):
    path, _, rows = review
    book = openpyxl.load_workbook(path)
    sheet = book["Review"]
    lines = by_row(sheet)
    assert lines[3]["note"].value == "Phạm Quốc Bảo: 2 khách VIP"
    assert lines[9]["note"].value.startswith("Vũ Hoàng Anh nghỉ việc")
    notes = {c.value: c.comment.text if c.comment else None for c in sheet[1]}
    assert all(notes.values()), notes
    assert notes["approved"].startswith("Chọn yes để duyệt dòng này")
    assert notes["conv_ids"].startswith("Mã các hội thoại cần chuyển")
    for target_header in book["Targets"][1]:
        assert target_header.comment is not None, target_header.value


def test_a_row_that_failed_its_preview_is_shaded_with_the_reason(review):
    path, _, rows = review
    lines = by_row(openpyxl.load_workbook(path)["Review"])
    for n, line in lines.items():
        fills = {c.fill.fgColor.rgb for name, c in line.items() if name != "approved"}
        assert fills == ({FAILED_FILL} if n == FAILED_ROW else {"00000000"}), n
    reason = rows[FAILED_ROW]["preview_error"]
    assert "user_not_found" in reason
    assert lines[FAILED_ROW]["approved"].comment.text == (
        f"Không thể duyệt: {reason}\nCannot be approved: {reason}"
    )
    assert lines[FAILED_ROW]["approved"].protection.locked is True
    with_notes = [n for n, line in lines.items() if any(c.comment for c in line.values())]
    assert with_notes == [FAILED_ROW]  # the rows after it carry no note of its


def test_the_plans_warnings_have_their_own_column(review):
    path, _, rows = review
    book = openpyxl.load_workbook(path)
    lines = by_row(book["Review"])
    warnings = {n: line["warnings"].value for n, line in lines.items() if line["warnings"].value}
    assert sorted(warnings) == [4, 9]
    assert warnings[9] == (
        "chain: lan.nguyen@example.vn is leaving too (row 2), so this transfer goes to "
        "tuan.ho@example.vn via lan.nguyen@example.vn"
    )
    # row 8 repeated row 6 and is not in the batch: its warning is on the About sheet
    about = [v for line in table(book["About"]) for v in line if v]
    assert "duplicate_row: same transfer as row 6: kept once" in about


def test_targets_sheet_shows_the_load_per_target_agent(review, batch, reports_dir):
    path, batch_id, rows = review
    sheet = openpyxl.load_workbook(path)["Targets"]
    assert table(sheet) == [
        ["target_email", "sources", "conversations"],
        ["tuan.ho@example.vn", "anh.vu@example.vn; bao.pham@example.vn; lan.nguyen@example.vn",
         rows[2]["conversations_previewed"] + rows[4]["conversations_previewed"]
         + rows[9]["conversations_previewed"]],
        ["ngoc.do@example.vn", "hung.bui@example.vn", rows[5]["conversations_previewed"]],
        ["hong.le@example.vn", "minh.tran@example.vn", rows[6]["conversations_previewed"]],
        ["mai.hoang@example.vn", "bao.pham@example.vn", 2],
    ]  # fmt: skip
    assert sheet.protection.sheet is True


def test_about_sheet_says_what_to_do_in_vietnamese_then_english(review, batch):
    path, batch_id, _ = review
    _, _, info = batch
    lines = table(openpyxl.load_workbook(path)["About"])
    facts = {line[0]: line[1] for line in lines if line[0] and "\n" in line[0]}
    assert facts["Mã lô\nBatch"] == batch_id
    assert facts["Tạo lúc\nCreated at"] == info["created_at"]
    assert facts["Thời hạn xem trước\nPreview age limit"] == "24 h"
    assert facts["Lệnh duyệt\nApprove command"] == (
        f"omi-batch approve {batch_id} --report {batch_id}-review.xlsx"
    )
    steps = [line[1] for line in lines if line[1]]
    first = steps.index(next(s for s in steps if s.startswith("Mở trang Review")))
    assert steps[first + 1].startswith("Open the Review sheet")


def test_a_person_fills_approved_in_the_workbook_and_approve_reads_it_back(
    runner, review, ledger_path
):
    path, batch_id, rows = review
    book = openpyxl.load_workbook(path)  # as a person's spreadsheet program opens it
    lines = by_row(book["Review"])
    for n, word in {2: "yes", 3: "yes", 4: "no", 9: "yes"}.items():
        lines[n]["approved"].value = word
    edited = path.with_name(f"{batch_id}-review-signed.xlsx")
    book.save(edited)
    result = invoke(runner, "approve", batch_id, "--report", edited, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 3 row(s) approved, 3 skipped." in result.stderr
    with Ledger(ledger_path) as ledger:
        states = {r["row"]: r["state"] for r in ledger.rows(batch_id)}
    assert states == {2: "approved", 3: "approved", 4: "skipped", 5: "skipped",  # left empty
                      6: "skipped", 7: "preview_failed", 9: "approved"}  # fmt: skip


def test_a_workbook_whose_emails_were_changed_is_refused(runner, review, ledger_path):
    path, batch_id, _ = review
    book = openpyxl.load_workbook(path)
    lines = by_row(book["Review"])
    lines[2]["approved"].value = "yes"
    lines[3]["target_email"].value = "lan.nguyen@example.vn"  # unprotected, then edited
    book.save(path)
    result = invoke(runner, "approve", batch_id, "--report", path, "--ledger", ledger_path)
    assert result.exit_code == 2, result.output
    assert ("row 3: target_email is 'lan.nguyen@example.vn' in the report but "
            "'mai.hoang@example.vn' in the ledger") in result.stderr  # fmt: skip
    with Ledger(ledger_path) as ledger:
        assert ledger.rows(batch_id, ["approved"]) == []


def test_writing_again_replaces_the_workbook_and_leaves_no_temporary_file(review, batch):
    path, batch_id, _ = review
    _, rows, info = batch
    workbook.write_review_workbook(rows, info, path)
    workbook.write_review_workbook(rows[:2], info, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert len(by_row(openpyxl.load_workbook(path)["Review"])) == 2


def test_results_workbook_after_a_run_shows_each_outcome_and_what_moved(
    runner, env, tmp_path, ledger_path, reports_dir
):
    source = tmp_path / "departures.csv"
    source.write_text(CSV, encoding="utf-8")
    result = invoke(runner, "run", source, "--yes", "--no-check-agents", "--rate", "1000",
                    "--listen", "127.0.0.1:0", "--wait", "5", "--ledger", ledger_path,
                    "--reports", reports_dir)  # fmt: skip
    assert result.exit_code == 1, result.output  # row 7 failed its preview
    with Ledger(ledger_path) as ledger:
        batch_id = ledger.batches()[0]["id"]
        rows, info, head = ledger.rows(batch_id), ledger.batch(batch_id), ledger.head()
    path = workbook.write_results_workbook(rows, info, tmp_path / "results.xlsx", head=head)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Results", "Targets", "About"]
    sheet = book["Results"]
    assert [c.value for c in sheet[1]] == RESULTS_COLUMNS
    status = {line[0].value: line[5] for line in sheet.iter_rows(2)}
    assert {n: c.value for n, c in status.items()} == {
        2: "succeeded", 3: "succeeded", 4: "succeeded", 5: "succeeded", 6: "succeeded",
        7: "preview_failed", 9: "succeeded",
    }  # fmt: skip
    assert status[7].fill.fgColor.rgb == FAILED_FILL
    assert status[2].fill.fgColor.rgb == "00000000"
    assert all(c.protection.locked for line in sheet.iter_rows() for c in line)
    targets = table(book["Targets"])
    assert targets[0] == ["target_email", "sources", "conversations", "moved"]
    moved = {line[0]: line[3] for line in targets[1:]}
    expected: dict[str, int] = {}
    for r in rows:
        if r["state"] == "succeeded":
            expected[r["target_email"]] = expected.get(r["target_email"], 0) + r["updated_records"]
    assert moved == expected and sum(moved.values()) > 0
    facts = {line[0]: line[1] for line in table(book["About"]) if line[0] and "\n" in line[0]}
    assert facts["Thành công\nsucceeded"] == 6
    assert facts["Lỗi xem trước\npreview_failed"] == 1
    assert facts["Mã băm sổ ghi\nLedger head"] == head


def test_every_cell_written_is_text_or_a_whole_number(review):
    """No float, date or formula sneaks in: what a reviewer sees is what the ledger holds."""
    path, _, _ = review
    book = openpyxl.load_workbook(path)
    for sheet in book.worksheets:
        for line in sheet.iter_rows():
            for cell in line:
                if cell.value is not None:
                    assert cell.data_type in ("s", "n"), (sheet.title, cell.coordinate)
                    assert isinstance(cell.value, str | int), (sheet.title, cell.coordinate)


def test_run_leaves_the_review_workbook_as_its_preview_wrote_it(
    runner, env, tmp_path, ledger_path, reports_dir
):
    """`run --yes` approves and executes after the preview: the review workbook is written
    once, by the preview (no `approved` filled in afterwards); the results go to their own."""
    from helpers import GOOD_CSV

    source = tmp_path / "departures.csv"
    source.write_text(GOOD_CSV, encoding="utf-8")
    result = invoke(runner, "run", source, "--yes", "--rate", "1000", "--listen", "127.0.0.1:0",
                    "--wait", "5", "--ledger", ledger_path, "--reports", reports_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    with Ledger(ledger_path) as ledger:
        [batch] = ledger.batches()
        assert {r["state"] for r in ledger.rows(batch["id"])} == {"succeeded"}
    review_lines = by_row(
        openpyxl.load_workbook(reports_dir / f"{batch['id']}-review.xlsx")["Review"]
    )
    assert sorted(review_lines) == [2, 3, 4, 5, 6]
    assert {line["approved"].value for line in review_lines.values()} == {None}
    assert {line["preview_status"].value for line in review_lines.values()} == {"previewed"}
    results = openpyxl.load_workbook(reports_dir / f"{batch['id']}-results.xlsx").worksheets[0]
    header = [c.value for c in results[1]]
    statuses = [line[header.index("status")] for line in results.iter_rows(2, values_only=True)]
    assert statuses == ["succeeded"] * 5


def test_workbook_paths_sit_beside_the_csv_reports(tmp_path):
    assert workbook.review_path(tmp_path, "B1") == Path(tmp_path) / "B1-review.xlsx"
    assert workbook.results_path(tmp_path, "B1") == Path(tmp_path) / "B1-results.xlsx"


def test_a_job_puts_the_workbook_in_review_and_executes_it_once_saved_into_approved(
    runner, simulator, tmp_path
):
    from helpers import API_KEY, write_job

    _, server = simulator
    # the sample as it is: row 8, whose target has no OMI account, fails its preview
    job_file = write_job(tmp_path / "offboarding.toml", check_agents=False)
    work = tmp_path / "work"
    (work / "inbox").mkdir(parents=True)
    sample = Path(__file__).resolve().parent.parent / "data" / "sample_offboarding.csv"
    (work / "inbox" / "departures.csv").write_bytes(sample.read_bytes())
    env = {"OMI_BASE_URL": server.url, "OMI_API_KEY": API_KEY}
    result = runner.invoke(cli, ["job", "run", str(job_file)], env=env)
    assert result.exit_code == 0, result.output
    [review] = sorted((work / "review").glob("*-review.xlsx"))
    batch_id = review.name.removesuffix("-review.xlsx")

    book = openpyxl.load_workbook(review)  # a person opens it from the review folder
    for line in by_row(book["Review"]).values():
        if line["preview_status"].value == "previewed":
            line["approved"].value = "yes"
    temporary = work / f".{review.name}"
    book.save(temporary)  # saved elsewhere, then moved in whole
    temporary.replace(work / "approved" / review.name)

    result = runner.invoke(cli, ["job", "run", str(job_file)], env=env)
    assert result.exit_code == 1, result.output  # the sample's row 8 failed its preview
    with Ledger(work / "ledger.db") as ledger:
        states = {r["row"]: r["state"] for r in ledger.rows(batch_id)}
    assert states == {2: "succeeded", 3: "succeeded", 4: "succeeded", 5: "succeeded",
                      6: "succeeded", 7: "succeeded", 8: "preview_failed"}  # fmt: skip
    archived = sorted(p.name for p in (work / "archive" / batch_id).iterdir())
    assert f"{batch_id}-approved.xlsx" in archived and f"{batch_id}-results.xlsx" in archived


def test_a_table_is_written_as_openpyxls_own_append_would_write_it(tmp_path, monkeypatch):
    """The cells handed to the write-only sheet as they are (no value conversion per cell) give
    the very XML openpyxl's own append path gives: values, styles, comments and row heights."""
    import pandas as pd

    from omi_batch.workbook import sheets

    frame = pd.DataFrame({
        "row": [2, 3, 4], "source_email": ["a@x.vn", "=b@x.vn", None],
        "conversations": [19, None, 0], "error": ["", "line one\nline two " * 8, "0123"],
        "approved": ["yes", None, "no"],
    })  # fmt: skip

    def style(index: int, column: str) -> tuple[str | None, bool]:
        return (sheets.FAILED_FILL if index == 1 else None), column == "approved"

    def comment(index: int, column: str) -> str | None:
        return "why it failed" if (index, column) == (1, "error") else None

    def written(name: str) -> dict[str, bytes]:
        book = sheets.Book()
        sheets.table(book.sheet("Review"), frame, {"row": "Dòng"}, style=style, comment=comment)
        path = book.save(tmp_path / name)
        with zipfile.ZipFile(path) as archive:
            return {n: archive.read(n) for n in archive.namelist() if n.startswith("xl/")}

    fast = written("fast.xlsx")
    monkeypatch.setattr(sheets, "_take_cells_as_they_are", lambda sheet: None)
    assert written("plain.xlsx") == fast
    assert b"why it failed" in fast["xl/comments/comment1.xml"]


def test_a_workbook_whose_column_was_deleted_is_refused_naming_it(runner, review, ledger_path):
    path, batch_id, _ = review
    book = openpyxl.load_workbook(path)
    sheet = book["Review"]
    for n, line in by_row(sheet).items():
        line["approved"].value = "" if n == FAILED_ROW else "yes"
    header = [c.value for c in sheet[1]]
    sheet.delete_cols(header.index("conversations") + 1)  # unprotected, then deleted
    edited = path.with_name(f"{batch_id}-review-signed.xlsx")
    book.save(edited)
    result = invoke(runner, "approve", batch_id, "--report", edited, "--ledger", ledger_path)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: {edited.name} has no column conversations: the preview report of batch "
        f"{batch_id} was written with it, and approve takes a report only with every column it "
        "was written with (it records only the approved and note cells); nothing was approved\n"
    )
    with Ledger(ledger_path) as ledger:
        assert ledger.rows(batch_id, ["approved"]) == []


def test_a_workbook_with_a_column_added_columns_reordered_and_its_sheet_renamed_and_moved_is_read(
    runner, review, ledger_path
):
    path, batch_id, _ = review
    book = openpyxl.load_workbook(path)
    sheet = book["Review"]
    for n in (2, 3):
        by_row(sheet)[n]["approved"].value = "yes"
    lines = table(sheet)
    for index, line in enumerate(lines, start=1):  # every column in reverse, then one more
        for column, value in enumerate([*reversed(line), "ok" if index > 1 else "comment"], 1):
            sheet.cell(index, column).value = value
    header = [c.value for c in sheet[1]]
    note = sheet.cell(2, header.index("note") + 1)
    note.value = f"{note.value} (checked)"
    target = sheet.cell(3, header.index("target_email") + 1)
    target.value = target.value.upper()
    sheet.title = "Sheet1"
    book.move_sheet("Sheet1", offset=2)
    edited = path.with_name(f"{batch_id}-review-signed.xlsx")
    book.save(edited)
    result = invoke(runner, "approve", batch_id, "--report", edited, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 2 row(s) approved, 4 skipped." in result.stderr
