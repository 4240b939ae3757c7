"""A file with very many problems: the first 100 are told, all are counted, and every one is in
the errors CSV when asked for."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from omi_batch.errors import InputError
from omi_batch.roster import MAX_PROBLEMS, read_plan


def many_bad_rows(path: Path, rows: int) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("source_email,target_email,replace_existing_members\r\n")
        for i in range(rows):
            handle.write(f"agent{i}@acme,t@acme.vn,{'maybe' if i % 2 else ''}\r\n")
        handle.write("x@acme.vn,y@acme.vn,\r\ny@acme.vn,x@acme.vn,\r\n")  # a cycle, at the end
    return path


def test_a_file_of_many_bad_rows_tells_the_first_100_and_counts_them_all(tmp_path):
    path = many_bad_rows(tmp_path / "d.csv", 5000)
    with pytest.raises(InputError) as caught:
        read_plan(path)
    error = caught.value
    assert error.total == 5000 + 2500 + 1
    assert str(error) == "d.csv: 7,501 problems found; nothing was sent"
    assert len(error.problems) == MAX_PROBLEMS == 100
    assert [(p.row, p.code) for p in error.problems[:3]] == [
        (2, "bad_email"),
        (3, "bad_email"),
        (3, "bad_boolean"),
    ]
    assert error.problems[-1].row == 68  # by row: rows 2..68 have 100 problems


def test_the_errors_csv_has_every_problem(tmp_path):
    path = many_bad_rows(tmp_path / "d.csv", 5000)
    errors = tmp_path / "d-errors.csv"
    with pytest.raises(InputError):
        read_plan(path, errors_csv=errors)
    with errors.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["row", "code", "message"]
    assert len(rows) == 1 + 7501
    assert rows[1] == ["2", "bad_email", "'agent0@acme' is not a valid email address"]
    assert rows[-1][:2] == ["5002", "cycle"]  # found last: the loops need every row


def test_a_problem_with_the_whole_file_is_in_the_errors_csv_too(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("source_email,tgt\r\na@x.vn,b@x.vn\r\n", encoding="utf-8")
    errors = tmp_path / "errors.csv"
    with pytest.raises(InputError) as caught:
        read_plan(path, errors_csv=errors)
    assert caught.value.total == 1
    assert errors.read_text(encoding="utf-8-sig").splitlines()[1].startswith("1,missing_column,")


def test_a_good_file_writes_an_errors_csv_with_only_its_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("source_email,target_email\r\na@x.vn,b@x.vn\r\n", encoding="utf-8")
    errors = tmp_path / "errors.csv"
    read_plan(path, errors_csv=errors)
    assert errors.read_bytes() == "\ufeffrow,code,message\r\n".encode()


def test_a_formula_in_a_problem_message_is_escaped_in_the_errors_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("source_email,target_email\r\n=cmd|x,b@x.vn\r\n", encoding="utf-8")
    errors = tmp_path / "errors.csv"
    with pytest.raises(InputError):
        read_plan(path, errors_csv=errors)
    rows = list(csv.reader(errors.open(encoding="utf-8-sig", newline="")))
    assert rows[1] == ["2", "bad_email", "'=cmd|x' is not a valid email address"]
    assert all(not cell.startswith("=") for row in rows for cell in row)


def test_fewer_problems_can_be_asked_for(tmp_path):
    path = many_bad_rows(tmp_path / "d.csv", 50)
    with pytest.raises(InputError) as caught:
        read_plan(path, max_problems=5)
    assert (len(caught.value.problems), caught.value.total) == (5, 76)
