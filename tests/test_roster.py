"""Reading the offboarding file: what is accepted, what is refused, and the plan it becomes.

The files under tests/data/roster/ are the table of cases: every ``good_*`` file must give the
exact plan below, every ``bad_*`` file exactly the problems below (row as Excel shows it, code).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import openpyxl
import pytest

from omi_batch.errors import InputError
from omi_batch.roster import MAX_CELL, MAX_NOTE, Plan, Problem, Transfer, read_plan

DATA = Path(__file__).parent / "data" / "roster"

A, B, C, D, E = (f"{name}@acme.vn" for name in ("an", "binh", "chi", "dung", "em"))
AN, BT, CL, DP = "an.nguyen@acme.vn", "binh.tran@acme.vn", "chi.le@acme.vn", "dung.pham@acme.vn"

# file → (transfers as (row, source, target, via, conv_ids, replace, note), warnings as (row, code))
GOOD = {
    "good_basic.csv": (
        [(2, AN, BT, (), (), False, ""), (3, CL, DP, (), (), True, "moved to team B")],
        [],
    ),
    "good_bom_semicolon.csv": (
        [(2, AN, BT, (), (), False, "has, a comma"), (3, CL, DP, (), (), False, "")],
        [],
    ),
    "good_tab.csv": (
        [(2, AN, BT, (), ("c1", "c2"), False, ""), (3, AN, DP, (), (), False, "")],
        [(2, "shared_split")],
    ),
    "good_mixed_case_headers.csv": ([(2, AN, BT, (), ("c1",), True, "spaced note")], []),
    "good_quoted_newline.csv": (
        [
            (2, AN, BT, (), (), False, "line one\nline two\nline three"),
            (3, CL, DP, (), (), False, "after the multi-line note"),
        ],
        [],
    ),
    "good_crlf.csv": (
        [(2, AN, BT, (), (), False, "windows\nnote"), (3, CL, DP, (), (), False, "")],
        [],
    ),
    "good_vietnamese.csv": (
        [
            (2, AN, BT, (), (), False, "Nguyễn Văn An nghỉ việc; chuyển cho Trần Thị Bình"),
            (3, CL, DP, (), (), False, "Lê Thị Chi, chuyển phòng"),
        ],
        [],
    ),
    "good_conv_ids_mixed.csv": (
        [
            (2, AN, BT, (), ("c1", "c2", "c3", "c4", "c5"), False, ""),
            (3, AN, DP, (), (), False, ""),
        ],
        [(2, "shared_split")],
    ),
    "good_booleans.csv": (
        [
            (row, f"a{row - 1}@acme.vn", "t@acme.vn", (), (), flag, "")
            for row, flag in zip(range(2, 8), (True, False, True, False, True, False), strict=True)
        ],
        [],
    ),
    "good_chain.csv": (
        [
            (2, A, D, (B, C), (), False, ""),
            (3, B, D, (C,), (), False, ""),
            (4, C, D, (), (), False, ""),
            (5, E, D, (C,), ("c9",), False, ""),
        ],
        [(2, "chain"), (3, "chain"), (5, "chain")],
    ),
    "good_duplicates.csv": (
        [(2, A, B, (), ("c1",), False, "first"), (5, A, B, (), (), False, "")],
        [(2, "shared_split"), (3, "duplicate_row"), (4, "duplicate_row")],
    ),
    "good_na_values.csv": (
        [
            (2, "na@acme.vn", "null@acme.vn", (), ("NA",), False, "NA"),
            (3, "none@acme.vn", "nan@acme.vn", (), ("N/A", "null"), False, "None"),
        ],
        [],
    ),
    # Excel's plain "CSV (Comma delimited)" on a Vietnamese Windows, and its "Unicode Text".
    "good_cp1258.csv": (
        [(2, "an@acme.vn", "binh@acme.vn", (), (), False, "Lê Văn Đông")],
        [(None, "legacy_encoding")],
    ),
    "good_utf16.csv": ([(2, "an@acme.vn", "binh@acme.vn", (), (), False, "")], []),
    "good_blank_rows.csv": ([(2, A, B, (), (), False, ""), (5, C, D, (), (), False, "")], []),
    "good_sep_line.csv": ([(2, A, B, (), (), False, "")], []),
    "good_aliases.csv": ([(2, A, B, (), ("c1",), True, "")], []),
    "good_unknown_column.csv": ([(2, A, B, (), (), False, "")], [(1, "unknown_column")]),
    "good_trailing_empty_columns.csv": (
        [(2, A, B, (), (), False, ""), (3, C, D, (), (), False, "")],
        [],
    ),
    # Per source, in order of first appearance: its conv_ids rows first, its catch-all last.
    "good_order.csv": (
        [
            (4, A, D, (), ("c1", "c2"), False, ""),
            (6, A, E, (), ("c3",), False, ""),
            (2, A, B, (), (), False, ""),
            (3, C, D, (), ("c7",), False, ""),
            (5, C, B, (), (), False, ""),
        ],
        [(3, "shared_split"), (4, "shared_split"), (6, "shared_split")],
    ),
}

# file → every problem as (row, code), in the order they are listed
BAD = {
    "bad_empty.csv": [(None, "empty_file")],
    "bad_whitespace_only.csv": [(None, "empty_file")],
    "bad_header_only.csv": [(None, "no_rows")],
    "bad_missing_column.csv": [(1, "missing_column")],
    "bad_one_column.csv": [(1, "missing_column")],
    "bad_duplicate_column.csv": [(1, "duplicate_column")],
    "bad_not_text.csv": [(None, "bad_encoding")],
    "bad_binary.csv": [(None, "binary_file")],
    "bad_old_excel.csv": [(None, "binary_file")],
    "bad_fake_xlsx.csv": [(None, "bad_xlsx")],
    "bad_emails.csv": [(2, "bad_email"), (3, "bad_email"), (5, "bad_email"), (5, "bad_email")],
    "bad_empty_cells.csv": [(2, "missing_value"), (3, "missing_value")],
    "bad_source_is_target.csv": [(3, "source_is_target")],
    "bad_boolean.csv": [(2, "bad_boolean"), (4, "bad_boolean")],
    "bad_duplicate_conversation.csv": [(3, "duplicate_conversation")],
    "bad_two_catch_alls.csv": [(3, "two_catch_alls")],
    "bad_cycle_two.csv": [(2, "cycle")],
    "bad_cycle_three.csv": [(2, "cycle")],
    "bad_cycle_conv_row.csv": [(2, "cycle")],
    "bad_fields.csv": [(3, "extra_fields"), (4, "missing_fields")],
    "bad_unclosed_quote.csv": [(3, "bad_quotes")],
    "bad_many.csv": [
        (2, "cycle"),
        (3, "bad_email"),
        (5, "source_is_target"),
        (6, "bad_boolean"),
        (9, "duplicate_conversation"),
    ],
}


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(InputError) as caught:
        read_plan(path)
    return caught.value.problems


def as_tuples(plan: Plan) -> list[tuple]:
    return [
        (
            t.row,
            t.source_email,
            t.target_email,
            t.via,
            t.conv_ids,
            t.replace_existing_members,
            t.note,
        )
        for t in plan.transfers
    ]


def test_every_data_file_is_in_the_table():
    on_disk = {p.name for p in DATA.glob("*.csv")}
    assert on_disk == set(GOOD) | set(BAD)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_file_gives_the_plan(name):
    transfers, warnings = GOOD[name]
    plan = read_plan(DATA / name)
    assert as_tuples(plan) == transfers
    assert [(w.row, w.code) for w in plan.warnings] == warnings


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_lists_every_problem(name):
    problems = problems_of(DATA / name)
    assert [(p.row, p.code) for p in problems] == BAD[name]


def test_problem_reads_like_a_sentence_with_its_row():
    problems = problems_of(DATA / "bad_emails.csv")
    assert [str(p) for p in problems] == [
        "row 2: bad_email: 'bob@' is not a valid email address",
        "row 3: bad_email: 'not an email' is not a valid email address",
        "row 5: bad_email: 'a..b@acme.vn' is not a valid email address",
        "row 5: bad_email: 'x@localhost' is not a valid email address",
    ]
    assert str(Problem(None, "no_rows", "the file has a header but no rows")) == (
        "no_rows: the file has a header but no rows"
    )


def test_the_error_message_counts_the_problems():
    with pytest.raises(InputError) as caught:
        read_plan(DATA / "bad_many.csv")
    assert str(caught.value) == "bad_many.csv: 5 problems found; nothing was sent"
    assert caught.value.exit_code == 2
    with pytest.raises(InputError) as caught:
        read_plan(DATA / "bad_empty.csv")
    assert str(caught.value) == "bad_empty.csv: 1 problem found; nothing was sent"


def test_a_cycle_is_named_whole():
    (three,) = problems_of(DATA / "bad_cycle_three.csv")
    assert three.message == (
        "chi@acme.vn → an@acme.vn → binh@acme.vn → chi@acme.vn (rows 2, 3, 4): "
        "someone in the loop must go to an agent who stays"
    )
    (two,) = problems_of(DATA / "bad_cycle_two.csv")
    assert two.message.startswith("an@acme.vn → binh@acme.vn → an@acme.vn (rows 2, 3)")
    (through_conv_row,) = problems_of(DATA / "bad_cycle_conv_row.csv")
    assert through_conv_row.message.startswith("an@acme.vn → binh@acme.vn → an@acme.vn (rows 2, 3)")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "bad_not_text.csv",
            "the file is neither UTF-8 nor Windows-1258 text (byte 0x81 on line 2): save it as "
            "CSV UTF-8 (in Excel: File > Save As > CSV UTF-8)",
        ),
        (
            "bad_binary.csv",
            "the file is not CSV text (it contains NUL bytes): save it as CSV UTF-8 (in Excel: "
            "File > Save As > CSV UTF-8)",
        ),
        (
            "bad_missing_column.csv",
            "no target_email column (name it 'target_email' or 'targetEmail' or 'target'); "
            "the header has 'source_email', 'tgt', 'note'",
        ),
        (
            "bad_two_catch_alls.csv",
            "an@acme.vn already goes to binh@acme.vn in row 2 (a row without conv_ids); "
            "this row sends them to chi@acme.vn",
        ),
        (
            "bad_duplicate_conversation.csv",
            "conversation 'c2' of an@acme.vn is already in row 2",
        ),
        ("bad_source_is_target.csv", "source and target are both 'chi@acme.vn'"),
        (
            "bad_boolean.csv",
            "replace_existing_members is 'maybe': use true/false, yes/no or 1/0 (blank = false)",
        ),
    ],
)
def test_problem_messages_say_what_to_do(name, message):
    assert problems_of(DATA / name)[0].message == message


def test_warnings_say_what_happened():
    plan = read_plan(DATA / "good_chain.csv")
    assert [str(w) for w in plan.warnings] == [
        "row 2: chain: binh@acme.vn is leaving too (row 3), so this transfer goes to "
        "dung@acme.vn via binh@acme.vn, chi@acme.vn",
        "row 3: chain: chi@acme.vn is leaving too (row 4), so this transfer goes to "
        "dung@acme.vn via chi@acme.vn",
        "row 5: chain: chi@acme.vn is leaving too (row 4), so this transfer goes to "
        "dung@acme.vn via chi@acme.vn",
    ]
    plan = read_plan(DATA / "good_duplicates.csv")
    assert [str(w) for w in plan.warnings if w.code == "duplicate_row"] == [
        "row 3: duplicate_row: same transfer as row 2: kept once",
        "row 4: duplicate_row: same transfer as row 2: kept once",
    ]


def test_chain_keeps_what_the_row_asked_for():
    first = read_plan(DATA / "good_chain.csv").transfers[0]
    assert first == Transfer(
        row=2,
        source_email=A,
        target_email=D,
        requested_target=B,
        via=(B, C),
        conv_ids=(),
        replace_existing_members=False,
        note="",
    )


def test_plan_knows_its_file_rows_sources_and_targets():
    path = DATA / "good_order.csv"
    plan = read_plan(path)
    assert plan.source_file == str(path)
    assert plan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plan.input_rows == 5
    assert plan.sources() == [A, C]
    assert plan.targets() == [D, E, B]
    assert read_plan(DATA / "good_blank_rows.csv").input_rows == 2


def test_limit_keeps_the_first_transfers_of_the_plan():
    plan = read_plan(DATA / "good_order.csv", limit=2)
    assert [t.row for t in plan.transfers] == [4, 6]
    assert plan.to_dict()["total_transfers"] == 5


def test_limit_still_validates_the_whole_file():
    assert [p.code for p in problems_of_limited(DATA / "bad_many.csv")] == [
        "cycle",
        "bad_email",
        "source_is_target",
        "bad_boolean",
        "duplicate_conversation",
    ]


def problems_of_limited(path: Path) -> list[Problem]:
    with pytest.raises(InputError) as caught:
        read_plan(path, limit=1)
    return caught.value.problems


def test_json_pieces_are_the_same_plan_as_to_dict():
    plan = read_plan(DATA / "good_chain.csv")
    text = "".join(plan.iter_json(batch=2))
    assert json.loads(text) == plan.to_dict()
    assert plan.to_dict()["transfers"][0] == {
        "row": 2,
        "source_email": A,
        "target_email": D,
        "requested_target": B,
        "via": [B, C],
        "conv_ids": [],
        "replace_existing_members": False,
        "note": "",
        "scope": "conversations",
    }
    assert plan.to_dict()["warnings"][0] == {
        "row": 2,
        "code": "chain",
        "message": plan.warnings[0].message,
    }
    empty = Plan("x.csv", "0" * 64, 0, [], [])
    assert json.loads("".join(empty.iter_json())) == empty.to_dict()


# --------------------------------------------------------------------------- made in the test


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


HEADER = ["source_email", "target_email", "conv_ids", "note"]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        # An address that long is never valid: at 1,000 characters it is checked and refused as
        # an email; past that it is refused for its length alone (and not echoed).
        (["a" * (MAX_CELL - 8) + "@acme.vn", B, "", ""], [(2, "bad_email")]),
        (["a" * (MAX_CELL - 7) + "@acme.vn", B, "", ""], [(2, "too_long")]),
        ([A, B, "", "n" * MAX_NOTE], []),
        ([A, B, "", "n" * (MAX_NOTE + 1)], [(2, "too_long")]),
        ([A, B, "c" * MAX_CELL, ""], []),
        ([A, B, "c" * (MAX_CELL + 1), ""], [(2, "too_long")]),
        ([A, B * 300, "", ""], [(2, "too_long")]),
    ],
    ids=["email-1000", "email-1001", "note-10000", "note-10001", "id-1000", "id-1001", "target"],
)
def test_very_long_cells_are_refused(tmp_path, row, expected):
    path = write_csv(tmp_path / "long.csv", [HEADER, row])
    if not expected:
        assert len(read_plan(path).transfers) == 1
        return
    assert [(p.row, p.code) for p in problems_of(path)] == expected


def test_very_long_email_is_not_echoed(tmp_path):
    path = write_csv(tmp_path / "long.csv", [HEADER, [A, "x" * 5000 + "@acme.vn", "", ""]])
    (problem,) = problems_of(path)
    assert str(problem) == "row 2: too_long: target_email is 5,008 characters long (at most 1,000)"


def test_a_cell_too_big_for_the_csv_reader_is_refused(tmp_path):
    path = write_csv(tmp_path / "huge.csv", [HEADER, [A, B, "", ""], [A, B, "", "n" * 200_000]])
    assert [(p.row, p.code) for p in problems_of(path)] == [(3, "too_long")]


def test_a_missing_file_is_refused(tmp_path):
    problems = problems_of(tmp_path / "nowhere.csv")
    assert [(p.row, p.code) for p in problems] == [(None, "unreadable")]


def make_workbook(path: Path, sheets: dict[str, list[list]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for number, cells in enumerate(rows, start=1):
            for column, value in enumerate(cells, start=1):
                if value is not None:
                    sheet.cell(row=number, column=column, value=value)
    book.save(path)
    return path


def test_xlsx_is_read_with_excel_row_numbers(tmp_path):
    path = make_workbook(
        tmp_path / "departures.xlsx",
        {
            "Nghỉ việc": [
                ["Source", "Target", "Replace_Existing_Members", "conv_ids", "Note"],
                [" AN@acme.vn ", "binh@acme.vn", True, 12345, "Nguyễn Văn An"],
                [None, None, None, None, None],
                ["chi@acme.vn", "dung@acme.vn", None, None, None],
                ["em@acme.vn", "dung@acme.vn", "no", "c1;c2", 3.5],
            ],
            "Notes": [["anything"]],
        },
    )
    plan = read_plan(path)
    assert as_tuples(plan) == [
        (2, A, B, (), ("12345",), True, "Nguyễn Văn An"),
        (4, C, D, (), (), False, ""),
        (5, E, D, (), ("c1", "c2"), False, "3.5"),
    ]
    assert [str(w) for w in plan.warnings] == [
        "extra_sheets: only the first sheet, 'Nghỉ việc', was read"
    ]


def test_xlsx_problems_have_excel_row_numbers(tmp_path):
    path = make_workbook(
        tmp_path / "departures.xlsx",
        {
            "Sheet1": [
                ["source_email", "target_email", "replace_existing_members"],
                ["an@acme.vn", "bob@", None],
                [None],
                ["chi@acme.vn", "dung@acme.vn", "maybe", "stray cell"],
            ]
        },
    )
    assert [(p.row, p.code) for p in problems_of(path)] == [
        (2, "bad_email"),
        (4, "extra_fields"),
    ]


def test_xlsx_saved_with_a_csv_name_is_read_as_a_workbook(tmp_path):
    path = make_workbook(tmp_path / "departures.csv", {"S": [["source", "target"], [A, B]]})
    assert as_tuples(read_plan(path)) == [(2, A, B, (), (), False, "")]


def test_csv_saved_with_an_xlsx_name_is_read_as_csv(tmp_path):
    path = write_csv(tmp_path / "departures.xlsx", [["source", "target"], [A, B]])
    assert as_tuples(read_plan(path)) == [(2, A, B, (), (), False, "")]


def test_empty_workbook_is_refused(tmp_path):
    path = make_workbook(tmp_path / "empty.xlsx", {"Sheet1": []})
    assert [(p.row, p.code) for p in problems_of(path)] == [(None, "empty_file")]


def test_the_same_conversation_of_different_sources_is_fine(tmp_path):
    path = write_csv(tmp_path / "ok.csv", [HEADER, [A, B, "c1", ""], [C, B, "c1", ""]])
    assert [t.conv_ids for t in read_plan(path).transfers] == [("c1",), ("c1",)]


def test_a_target_that_only_moves_some_conversations_is_not_leaving(tmp_path):
    # binh hands c1 to chi but keeps the rest: an's conversations still go to binh.
    path = write_csv(tmp_path / "ok.csv", [HEADER, [A, B, "", ""], [B, C, "c1", ""]])
    plan = read_plan(path)
    assert [(t.source_email, t.target_email, t.via) for t in plan.transfers] == [
        (A, B, ()),
        (B, C, ()),
    ]
    assert plan.warnings == []


def test_a_split_that_keeps_the_source_warns_that_the_catch_all_adds_its_target_too(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text(
        "source_email,target_email,conv_ids,replace_existing_members\n"
        "a@x.vn,b@x.vn,c1;c2,false\n"
        "a@x.vn,c@x.vn,,false\n"
        "d@x.vn,e@x.vn,c3,true\n"
        "d@x.vn,f@x.vn,,false\n",
        encoding="utf-8",
    )
    plan = read_plan(path)
    assert [str(w) for w in plan.warnings] == [
        "row 2: shared_split: replace_existing_members is false, so a@x.vn stays in these "
        "2 conversation(s) and the catch-all row 3 will also add c@x.vn to them; set it to "
        "true to hand them to this target alone"
    ]


def test_a_retry_report_reads_back_with_its_formula_escapes_undone(tmp_path):
    path = tmp_path / "retry.csv"
    path.write_text(
        "source_email,target_email,replace_existing_members,conv_ids,note\n"
        "a@x.vn,b@x.vn,true,'-c1;=c2,'=SUM(A1)\n",
        encoding="utf-8-sig",
    )
    (transfer,) = read_plan(path).transfers
    assert transfer.conv_ids == ("-c1", "=c2")
    assert transfer.note == "=SUM(A1)"


# --------------------------------------------------------------------------- conv_ids separators


@pytest.mark.parametrize(
    ("cell", "conv_ids"),
    [
        ("a, b", ("a", "b")),
        ("a,b", ("a", "b")),
        ("a;b,c", ("a", "b", "c")),
        ("a,,b", ("a", "b")),
        ("a;;b", ("a", "b")),
        ("a,b,", ("a", "b")),
        (",a , b;", ("a", "b")),
        ("a | b, a", ("a", "b")),
    ],
)
def test_conv_ids_are_separated_by_commas_too(tmp_path, cell, conv_ids):
    path = write_csv(tmp_path / "ids.csv", [HEADER, [A, B, cell, ""]])
    assert as_tuples(read_plan(path)) == [(2, A, B, (), conv_ids, False, "")]


def test_the_reviewers_comma_separated_row_gives_two_conversations(tmp_path):
    path = tmp_path / "comma.csv"
    path.write_text(
        "source_email,target_email,conv_ids,replace_existing_members\n"
        'thu.dang@example.vn,khoa.duong@example.vn,"6a5706ec81a0ba056ce9da66, '
        '6a642d7c6b3e8c80507e30fe",true\n',
        encoding="utf-8",
    )
    assert as_tuples(read_plan(path)) == [
        (
            2,
            "thu.dang@example.vn",
            "khoa.duong@example.vn",
            (),
            ("6a5706ec81a0ba056ce9da66", "6a642d7c6b3e8c80507e30fe"),
            True,
            "",
        )
    ]


def test_a_number_excel_wrote_with_a_decimal_comma_is_refused_whole(tmp_path):
    path = write_csv(tmp_path / "ids.csv", [HEADER, [A, B, "c1;6,92E+23", ""]])
    (problem,) = problems_of(path)
    assert (problem.row, problem.code) == (2, "scientific_conv_id")
    assert problem.message.startswith("conv_ids has '6,92E+23'; Excel turned")


# --------------------------------------------------------------------------- what Excel hides


def hiding_workbook(path: Path, sheets: list[tuple[str, str, list[list]]]) -> Path:
    """A workbook of (title, state, rows) sheets; the first visible one is the active one."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, state, rows in sheets:
        sheet = book.create_sheet(title)
        sheet.sheet_state = state
        for cells in rows:
            sheet.append(cells)
    book.active = next(i for i, (_, state, _) in enumerate(sheets) if state == "visible")
    book.save(path)
    return path


LAN, HONG = "lan.nguyen@example.vn", "hong.le@example.vn"
THU, KHOA = "thu.dang@example.vn", "khoa.duong@example.vn"


@pytest.mark.parametrize("state", ["hidden", "veryHidden"])
def test_a_hidden_first_sheet_is_not_read(tmp_path, state):
    path = hiding_workbook(
        tmp_path / "hidden_sheet.xlsx",
        [
            ("Hidden", state, [["source_email", "target_email"], [THU, KHOA]]),
            ("Visible", "visible", [["source_email", "target_email"], [LAN, HONG]]),
        ],
    )
    plan = read_plan(path)
    assert as_tuples(plan) == [(2, LAN, HONG, (), (), False, "")]
    assert [str(w) for w in plan.warnings] == [
        "extra_sheets: only the sheet 'Visible' was read; the hidden sheet 'Hidden' was left out"
    ]


def test_hidden_sheets_after_the_one_read_are_named_as_left_out(tmp_path):
    path = hiding_workbook(
        tmp_path / "departures.xlsx",
        [
            ("Danh sách", "visible", [["source", "target"], [LAN, HONG]]),
            ("Cũ", "hidden", [["source", "target"], [THU, KHOA]]),
            ("Tra cứu", "veryHidden", [["anything"]]),
        ],
    )
    plan = read_plan(path)
    assert as_tuples(plan) == [(2, LAN, HONG, (), (), False, "")]
    assert [str(w) for w in plan.warnings] == [
        "extra_sheets: only the first sheet, 'Danh sách', was read; the hidden sheets 'Cũ' "
        "and 'Tra cứu' were left out"
    ]


def test_a_hidden_sheet_is_read_only_when_no_visible_sheet_has_the_columns(tmp_path):
    path = hiding_workbook(
        tmp_path / "departures.xlsx",
        [
            ("Hướng dẫn", "visible", [["Điền danh sách vào sheet Data"]]),
            ("Data", "hidden", [["source_email", "target_email"], [THU, KHOA]]),
        ],
    )
    plan = read_plan(path)
    assert as_tuples(plan) == [(2, THU, KHOA, (), (), False, "")]
    assert [str(w) for w in plan.warnings] == [
        "extra_sheets: only the sheet 'Data' was read, and it is hidden in Excel: no visible "
        "sheet has the columns"
    ]


def test_rows_excel_hides_are_read_and_named(tmp_path):
    path = tmp_path / "hidden_row.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["source_email", "target_email", "note"])
    for number in range(2, 9):
        sheet.append([f"a{number}@acme.vn", "t@acme.vn", f"row {number}"])
    sheet.append([None, None, None])  # row 9: blank, hidden: nothing read, nothing named
    sheet.auto_filter.ref = "A1:C9"
    for number in (1, 3, 5, 6, 7, 9):  # the header and blank rows are not named
        sheet.row_dimensions[number].hidden = True
    book.save(path)
    plan = read_plan(path)
    assert as_tuples(plan) == [
        (n, f"a{n}@acme.vn", "t@acme.vn", (), (), False, f"row {n}") for n in range(2, 9)
    ]
    assert [str(w) for w in plan.warnings] == [
        "hidden_rows: rows 3 and 5-7 are hidden in Excel (hidden or filtered out) but were "
        "read like the others"
    ]


def test_one_hidden_row_is_named_alone_and_many_are_summed_up(tmp_path):
    def warnings_of(hidden: list[int]) -> list[str]:
        path = tmp_path / "rows.xlsx"
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(["source", "target"])
        for number in range(2, 40):
            sheet.append([f"a{number}@acme.vn", "t@acme.vn"])
        for number in hidden:
            sheet.row_dimensions[number].hidden = True
        book.save(path)
        return [str(w) for w in read_plan(path).warnings]

    assert warnings_of([3]) == [
        "hidden_rows: row 3 is hidden in Excel (hidden or filtered out) but was read like the "
        "others"
    ]
    assert warnings_of([*range(2, 25, 2), 25]) == [
        "hidden_rows: rows 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, … (13 rows in all) are hidden in "
        "Excel (hidden or filtered out) but were read like the others"
    ]
