"""The one reader of table files: what Excel really writes, read the same by `validate` (the
offboarding file) and `approve` (the preview report a person edited).

Every file here is made of real bytes in its encoding (``str.encode``) or a real workbook
(openpyxl), the way Excel on a Vietnamese Windows saves them.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import openpyxl
import pytest

from omi_batch.errors import InputError
from omi_batch.reports import read_approvals
from omi_batch.roster import read_plan
from omi_batch.tables import approved_word, cell_text

NOTE = "Nguyễn Thị Hồng Nhung nghỉ việc - đồng ý chuyển"
REPORT_HEADER = ["row", "source_email", "target_email", "conv_ids", "approved"]
_TONES = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}


def cp1258(text: str) -> bytes:
    """``text`` as Windows-1258 writes it: base letters precomposed, tone marks combining."""
    out = bytearray()
    for char in unicodedata.normalize("NFC", text):
        try:
            out += char.encode("cp1258")
        except UnicodeEncodeError:
            parts = unicodedata.normalize("NFD", char)
            tones = "".join(p for p in parts if p in _TONES)
            base = unicodedata.normalize("NFC", "".join(p for p in parts if p not in _TONES))
            out += (base + tones).encode("cp1258")
    return bytes(out)


def roster_text(delimiter: str = ",") -> str:
    rows = [
        ["source_email", "target_email", "note"],
        ["an@acme.vn", "binh@acme.vn", NOTE],
        ["chi@acme.vn", "dung@acme.vn", "Lê Văn Đông"],
    ]
    return "".join(delimiter.join(r) + "\r\n" for r in rows)


def report_text(words: list[str], delimiter: str = ",") -> str:
    lines = [delimiter.join(REPORT_HEADER)]
    for number, word in enumerate(words, start=2):
        lines.append(delimiter.join([str(number), f"a{number}@acme.vn", "t@acme.vn", "", word]))
    return "\r\n".join(lines) + "\r\n"


SAVED_AS = {
    "csv_utf8_bom": lambda text: "\ufeff".encode() + text.encode("utf-8"),
    "csv_utf8": lambda text: text.encode("utf-8"),
    "csv_windows_1258": cp1258,
    "unicode_text_utf16": lambda text: text.replace(",", "\t").encode("utf-16"),
    "semicolons_utf8": lambda text: text.replace(",", ";").encode("utf-8"),
    "semicolons_windows_1258": lambda text: cp1258(text.replace(",", ";")),
}


@pytest.mark.parametrize("how", sorted(SAVED_AS))
def test_validate_reads_the_file_however_excel_saved_it(tmp_path, how):
    path = tmp_path / "departures.csv"
    path.write_bytes(SAVED_AS[how](roster_text()))
    plan = read_plan(path)
    assert [(t.row, t.source_email, t.target_email, t.note) for t in plan.transfers] == [
        (2, "an@acme.vn", "binh@acme.vn", NOTE),
        (3, "chi@acme.vn", "dung@acme.vn", "Lê Văn Đông"),
    ]
    # Windows-1258 writes tone marks apart: the note comes back composed (NFC), as typed.
    assert all(unicodedata.is_normalized("NFC", t.note) for t in plan.transfers)


def test_a_windows_1258_file_warns_how_it_was_read(tmp_path):
    path = tmp_path / "departures.csv"
    path.write_bytes(cp1258(roster_text()))
    assert [(w.row, w.code) for w in read_plan(path).warnings] == [(None, "legacy_encoding")]


def test_utf8_text_is_never_misread_as_windows_1258(tmp_path):
    # Every byte of this UTF-8 text is also valid Windows-1258: strict UTF-8 must win.
    path = tmp_path / "departures.csv"
    path.write_bytes(roster_text().encode("utf-8"))
    plan = read_plan(path)
    assert plan.transfers[0].note == NOTE
    assert plan.warnings == []


def test_a_file_neither_utf8_nor_windows_1258_says_save_as_csv_utf8(tmp_path):
    path = tmp_path / "departures.csv"
    path.write_bytes(b"source_email,target_email\r\nan@acme.vn,binh@acme.vn\x81\r\n")
    with pytest.raises(InputError) as caught:
        read_plan(path)
    (problem,) = caught.value.problems
    assert problem.code == "bad_encoding"
    assert "save it as CSV UTF-8" in problem.message


@pytest.mark.parametrize("how", sorted(SAVED_AS))
def test_approve_reads_the_report_however_excel_saved_it(tmp_path, how):
    path = tmp_path / "b1-preview.csv"
    path.write_bytes(SAVED_AS[how](report_text(["yes", "", "Có", "không"])))
    assert [(a["row"], a["source_email"], a["approved"]) for a in read_approvals(path)] == [
        (2, "a2@acme.vn", True),
        (3, "a3@acme.vn", False),
        (4, "a4@acme.vn", True),
        (5, "a5@acme.vn", False),
    ]


APPROVING = ["yes", "Y", "TRUE", "1", "x", "X", "có", "Có", "co", "đồng ý", "Đồng Ý", "dong y",
             "OK", "ok", "✓", "✔", "✔\ufe0f", " yes "]  # fmt: skip
NOT_APPROVING = ["", "no", "N", "false", "0", "không", "Không", "khong", "  "]


@pytest.mark.parametrize("word", APPROVING)
def test_the_words_vietnamese_staff_type_approve_a_row(word):
    assert approved_word(word) is True
    assert approved_word(unicodedata.normalize("NFD", word)) is True


@pytest.mark.parametrize("word", NOT_APPROVING)
def test_no_and_blank_leave_a_row_unapproved(word):
    assert approved_word(word) is False


def test_an_unknown_approved_word_is_refused_naming_the_line_and_the_value(tmp_path):
    path = tmp_path / "b1-preview.csv"
    path.write_text(report_text(["yes", "maybe", "có", "duyệt"]), encoding="utf-8-sig")
    with pytest.raises(InputError) as caught:
        read_approvals(path)
    assert caught.value.problems == [
        "report line 3: approved is 'maybe'; use yes / có / đồng ý / ok / x / ✓ to approve, "
        "no / không or empty to leave it",
        "report line 5: approved is 'duyệt'; use yes / có / đồng ý / ok / x / ✓ to approve, "
        "no / không or empty to leave it",
    ]


def test_a_conv_id_excel_made_scientific_in_the_report_says_format_it_as_text(tmp_path):
    path = tmp_path / "b1-preview.csv"
    path.write_text(
        "row,source_email,target_email,conv_ids,approved\r\n2,a@acme.vn,b@acme.vn,6.92E+23,yes\r\n",
        encoding="utf-8",
    )
    with pytest.raises(InputError) as caught:
        read_approvals(path)
    assert caught.value.problems == [
        "report line 2 (row 2): conv_ids has '6.92E+23'; Excel turned a long conversation id "
        "into a number and lost its digits: format the conv_ids column as Text before pasting "
        "the ids (or type a ' before each), then paste them again"
    ]


def test_a_conv_id_excel_made_scientific_in_the_offboarding_file_is_refused(tmp_path):
    path = tmp_path / "departures.csv"
    path.write_text(
        "source_email;target_email;conv_ids\r\n"
        "an@acme.vn;binh@acme.vn;6,92E+23\r\n"
        "chi@acme.vn;dung@acme.vn;692f0a1b2c3d4e5f60718293|6.92e+23\r\n"
        "em@acme.vn;dung@acme.vn;1e5\r\n",  # an id, not a number Excel rewrote
        encoding="utf-8",
    )
    with pytest.raises(InputError) as caught:
        read_plan(path)
    assert [(p.row, p.code) for p in caught.value.problems] == [
        (2, "scientific_conv_id"),
        (3, "scientific_conv_id"),
    ]
    assert "format the conv_ids column as Text before pasting" in caught.value.problems[0].message


def test_a_long_number_in_a_workbook_reads_as_excel_shows_it():
    assert cell_text(6.92e23) == "6.92E+23"
    assert cell_text(3.0) == "3"
    assert cell_text(None) == ""
    assert cell_text(True) == "true"


def make_book(path: Path, sheets: dict[str, list[list]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for cells in rows:
            sheet.append(cells)
    book.save(path)
    return path


REVIEW_ROWS = [REPORT_HEADER, [2, "a2@acme.vn", "t@acme.vn", None, "có"], [3.0, "a3@acme.vn",
               "t@acme.vn", "c1;c2", None]]  # fmt: skip
OTHER = [["target_email", "sources"], ["t@acme.vn", "a2@acme.vn"]]


@pytest.mark.parametrize(
    "sheets",
    [
        {"Targets": OTHER, " review ": REVIEW_ROWS, "About": [["omi-batch"]]},
        {"About": [["omi-batch"]], "b1 Preview report": REVIEW_ROWS},
        {"Targets": OTHER, "Sheet2": REVIEW_ROWS},
        {"Trang tính1": REVIEW_ROWS, "Targets": OTHER},
    ],
    ids=["named_review", "named_like_preview", "header_has_row_and_approved", "first_sheet"],
)
def test_approve_finds_the_report_on_its_sheet_of_a_workbook(tmp_path, sheets):
    path = make_book(tmp_path / "b1-review.xlsx", sheets)
    approvals = read_approvals(path)
    assert [(a["line"], a["row"], a["conv_ids"], a["approved"]) for a in approvals] == [
        (2, 2, [], True),
        (3, 3, ["c1", "c2"], False),
    ]
    assert approvals[0]["cells"]["conv_ids"] == ""


def test_validate_reads_the_roster_sheet_of_a_workbook(tmp_path):
    path = make_book(
        tmp_path / "departures.xlsx",
        {"Hướng dẫn": [["Điền danh sách ở trang sau"]],
         "Danh sách": [["Source", "Target"], ["an@acme.vn", "binh@acme.vn"]]},
    )  # fmt: skip
    plan = read_plan(path)
    assert [(t.row, t.source_email) for t in plan.transfers] == [(2, "an@acme.vn")]
    assert [str(w) for w in plan.warnings] == ["extra_sheets: only the sheet 'Danh sách' was read"]


@pytest.mark.parametrize(
    "content",
    [b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), b"PK\x03\x04 not a workbook",
     b"row,approved\r\n2,yes\x81\r\n", b"a\x00b"],
    ids=["old_xls", "broken_zip", "not_text", "nul_bytes"],
)  # fmt: skip
def test_a_report_approve_cannot_read_says_save_as_csv_utf8(tmp_path, content):
    path = tmp_path / "b1-preview.csv"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        read_approvals(path)
    assert str(caught.value) == "cannot read the report b1-preview.csv; nothing was approved"
    (problem,) = caught.value.problems
    assert "save it as" in problem.message
    assert "codec" not in problem.message
