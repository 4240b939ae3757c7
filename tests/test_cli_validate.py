"""`omi-batch validate FILE`: what a user sees, and the exit codes scripts rely on."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

from omi_batch.cli import cli
from omi_batch.roster import read_plan

DATA = Path(__file__).parent / "data" / "roster"
PROJECT = Path(__file__).resolve().parent.parent
BAD_FILES = sorted(p.name for p in DATA.glob("bad_*.csv"))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: validate sends nothing."""

    def refuse(*args, **kwargs):
        raise AssertionError("validate tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_good_file_prints_the_plan(runner, no_network):
    result = runner.invoke(cli, ["validate", str(DATA / "good_basic.csv")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "row  source_email       target_email       via  scope          conversations  replace  note",
        "---  -----------------  -----------------  ---  -------------  -------------  -------  ---------------",
        "  2  an.nguyen@acme.vn  binh.tran@acme.vn       conversations  all            no",
        "  3  chi.le@acme.vn     dung.pham@acme.vn       conversations  all            yes      moved to team B",
        "2 transfers from 2 sources to 2 targets; 2 rows read, 0 warnings. Nothing was sent.",
    ]
    assert result.stderr == ""


def test_warnings_go_to_stderr_and_the_table_to_stdout(runner):
    result = runner.invoke(cli, ["validate", str(DATA / "good_chain.csv")])
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "Warning: row 2: chain: binh@acme.vn is leaving too (row 3), so this transfer goes to "
        "dung@acme.vn via binh@acme.vn, chi@acme.vn",
        "Warning: row 3: chain: chi@acme.vn is leaving too (row 4), so this transfer goes to "
        "dung@acme.vn via chi@acme.vn",
        "Warning: row 5: chain: chi@acme.vn is leaving too (row 4), so this transfer goes to "
        "dung@acme.vn via chi@acme.vn",
    ]
    lines = result.stdout.splitlines()
    assert lines[2].split() == [
        "2",
        "an@acme.vn",
        "dung@acme.vn",
        "binh@acme.vn,",
        "chi@acme.vn",
        "conversations",
        "all",
        "no",
    ]
    assert lines[-1] == (
        "4 transfers from 4 sources to 1 target; 4 rows read, 3 warnings. Nothing was sent."
    )
    assert "Warning" not in result.stdout


def test_json_is_the_plan_with_its_warnings(runner):
    result = runner.invoke(cli, ["validate", str(DATA / "good_chain.csv"), "--json"])
    assert result.exit_code == 0
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert data == read_plan(DATA / "good_chain.csv").to_dict()
    assert [w["code"] for w in data["warnings"]] == ["chain", "chain", "chain"]
    assert (data["input_rows"], data["total_transfers"], data["sources"], data["targets"]) == (
        4,
        4,
        4,
        1,
    )


def test_limit_keeps_the_first_transfers(runner):
    path = str(DATA / "good_order.csv")
    data = json.loads(runner.invoke(cli, ["validate", path, "--json", "--limit", "2"]).stdout)
    assert [t["row"] for t in data["transfers"]] == [4, 6]
    assert data["total_transfers"] == 5
    result = runner.invoke(cli, ["validate", path, "--limit", "2"])
    assert result.stdout.splitlines()[-1] == (
        "the first 2 of 5 transfers (--limit) from 1 source to 2 targets; "
        "5 rows read, 3 warnings. Nothing was sent."
    )


def test_limit_must_be_positive(runner):
    result = runner.invoke(cli, ["validate", str(DATA / "good_basic.csv"), "--limit", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--limit'" in result.stderr


def test_bad_file_lists_every_problem_and_exits_2(runner, no_network):
    result = runner.invoke(cli, ["validate", str(DATA / "bad_many.csv")])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: bad_many.csv: 5 problems found; nothing was sent",
        "  row 2: cycle: an@acme.vn → binh@acme.vn → an@acme.vn (rows 2, 7): someone in the "
        "loop must go to an agent who stays",
        "  row 3: bad_email: 'bob@' is not a valid email address",
        "  row 5: source_is_target: source and target are both 'chi@acme.vn'",
        "  row 6: bad_boolean: replace_existing_members is 'perhaps': use true/false, yes/no or "
        "1/0 (blank = false)",
        "  row 9: duplicate_conversation: conversation 'x1' of giang@acme.vn is already in row 8",
    ]


@pytest.mark.parametrize("name", BAD_FILES)
def test_every_bad_file_exits_2_without_a_traceback(runner, name):
    for options in ([], ["--json"]):
        result = runner.invoke(cli, ["validate", str(DATA / name), *options])
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert result.stderr.startswith(f"Error: {name}: ")
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        )


def test_a_missing_file_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(cli, ["validate", str(tmp_path / "nowhere.csv")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_validate_writes_nothing(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a ledger or reports would land by default
    shutil.copy(DATA / "good_chain.csv", "departures.csv")
    result = runner.invoke(cli, ["validate", "departures.csv"])
    assert result.exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["departures.csv"]


def test_xlsx_through_the_cli(runner, tmp_path):
    book = openpyxl.Workbook()
    book.active.append(["sourceEmail", "targetEmail", "note"])
    book.active.append(["an@acme.vn", "binh@acme.vn", "Trần Thị Bình nhận"])
    path = tmp_path / "departures.xlsx"
    book.save(path)
    data = json.loads(runner.invoke(cli, ["validate", str(path), "--json"]).stdout)
    assert [(t["row"], t["target_email"], t["note"]) for t in data["transfers"]] == [
        (2, "binh@acme.vn", "Trần Thị Bình nhận")
    ]


def test_validate_has_help_with_an_example(runner):
    result = runner.invoke(cli, ["validate", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert "omi-batch validate departures.csv" in result.stdout


# --------------------------------------------------------------------------- a real process


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omi_batch", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=PROJECT,
        timeout=60,
        check=False,
    )


def test_subprocess_refuses_a_bad_file_with_exit_2():
    done = run_module("validate", str(DATA / "bad_many.csv"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[0] == "Error: bad_many.csv: 5 problems found; nothing was sent"
    assert len(done.stderr.splitlines()) == 6
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["bad_binary.csv", "bad_not_text.csv", "bad_unclosed_quote.csv"])
def test_subprocess_refuses_unreadable_files_without_a_traceback(name):
    done = run_module("validate", str(DATA / name))
    assert done.returncode == 2
    assert "save it as CSV UTF-8" in done.stderr
    assert "Traceback" not in done.stderr


def test_subprocess_prints_json_for_a_good_file():
    done = run_module("validate", str(DATA / "good_vietnamese.csv"), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    data = json.loads(done.stdout)
    assert data["transfers"][1]["note"] == "Lê Thị Chi, chuyển phòng"


def test_help_does_not_load_the_heavy_libraries():
    code = (
        "import sys; from click.testing import CliRunner; from omi_batch.cli import cli;"
        "CliRunner().invoke(cli, ['validate', '--help']);"
        "print(sorted(m for m in ('pandas', 'rich', 'openpyxl', 'email_validator') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- many problems, scope


def write_bad_rows(path: Path, rows: int) -> Path:
    lines = ["source_email,target_email"] + [f"agent{i}@acme,t@acme.vn" for i in range(rows)]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def test_many_problems_tell_the_first_100_then_how_many_more_and_where_all_are(runner, tmp_path):
    path = write_bad_rows(tmp_path / "departures.csv", 150)
    result = runner.invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    errors = tmp_path / "departures-errors.csv"
    assert lines[0] == "Error: departures.csv: 150 problems found; nothing was sent"
    assert lines[1] == "  row 2: bad_email: 'agent0@acme' is not a valid email address"
    assert lines[100] == "  row 101: bad_email: 'agent99@acme' is not a valid email address"
    assert lines[101:] == ["  and 50 more", f"Every problem is listed in {errors}"]
    with errors.open(encoding="utf-8-sig", newline="") as handle:
        assert len(list(csv.reader(handle))) == 1 + 150
    assert sorted(p.name for p in tmp_path.iterdir()) == ["departures-errors.csv", "departures.csv"]


def test_a_few_problems_write_no_errors_csv_unless_asked(runner, tmp_path):
    path = write_bad_rows(tmp_path / "departures.csv", 3)
    result = runner.invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["departures.csv"]
    asked = tmp_path / "out" / "problems.csv"
    asked.parent.mkdir()
    result = runner.invoke(cli, ["validate", str(path), "--errors-csv", str(asked)])
    assert result.stderr.splitlines()[-1] == f"Every problem is listed in {asked}"
    assert len(asked.read_text(encoding="utf-8-sig").splitlines()) == 4


def test_validate_scope_fills_rows_without_a_scope_and_the_table_shows_it(runner, tmp_path):
    path = tmp_path / "departures.csv"
    path.write_text("source_email,target_email\r\na@x.vn,b@x.vn\r\n", encoding="utf-8")
    result = runner.invoke(cli, ["validate", str(path), "--scope", "tickets"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2].split() == ["2", "a@x.vn", "b@x.vn", "tickets", "no"]
    data = json.loads(
        runner.invoke(cli, ["validate", str(path), "--scope", "all", "--json"]).stdout
    )
    assert data["transfers"][0]["scope"] == "both"


def test_an_unknown_scope_option_exits_2(runner, tmp_path):
    path = tmp_path / "departures.csv"
    path.write_text("source_email,target_email\r\na@x.vn,b@x.vn\r\n", encoding="utf-8")
    result = runner.invoke(cli, ["validate", str(path), "--scope", "phones"])
    assert result.exit_code == 2
    assert result.stderr == ("Error: scope 'phones' is not one of: conversations, tickets, both\n")


@pytest.mark.parametrize("command", ["preview", "run"])
def test_preview_and_run_take_scope(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert "--scope SCOPE" in result.stdout
