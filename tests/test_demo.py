"""`make demo` (python -m omi_batch.demo) as a real subprocess, and `make offboard`'s
configuration messages."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from omi_batch.cli import cli
from omi_batch.ledger import Ledger

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample_offboarding.csv"
DEMO_TIMEOUT = 120


def run_demo(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omi_batch.demo", "--out", str(tmp_path / "demo"), *args],
        cwd=REPO, env={**os.environ, **env}, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=DEMO_TIMEOUT, check=False,
    )  # fmt: skip


def refused(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def test_the_demo_runs_the_whole_flow_and_stops_the_simulator(tmp_path):
    # The caller's configuration is ignored: the demo needs none and touches no real OMI.
    done = run_demo(tmp_path, OMI_BASE_URL="http://127.0.0.1:9", OMI_API_KEY="not-this-one",
                    OMI_WEBHOOK_URL="http://127.0.0.1:9")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("omi-batch demo: the whole flow on data/sample_offboarding.csv against "
                        "the built-in OMI simulator (no configuration, no network).")  # fmt: skip
    address = re.search(
        r"^OMI simulator listening on (http://127\.0\.0\.1:\d+) ", done.stdout, re.M
    )
    assert address
    # First the directory check catches row 8 (the sample's last), as designed; then the run
    # goes on without it.
    out = tmp_path / "demo"
    copy = out / "sample_offboarding-without-row-8.csv"
    assert lines[3:7] == [
        "$ omi-batch validate data/sample_offboarding.csv --check-agents",
        "Row 8 caught before anything moved, as designed: long.ly@example.vn has no OMI account "
        "(exit 2, nothing was sent, no batch was created).",
        f"As an operator would, the demo writes a copy without it and runs that: {copy}",
        f"$ omi-batch run {copy} --yes --listen 127.0.0.1:0 --ledger {out / 'ledger.db'} "
        f"--reports {out / 'reports'} --wait 30",
    ]
    assert ("  row 8: target_not_found: target long.ly@example.vn is not in OMI's agent "
            "directory\n") in done.stderr  # fmt: skip
    sample = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    assert copy.read_text(encoding="utf-8") == "".join(sample[:7])
    # The results table, from `omi-batch run` (plain columns: the demo reads it through a
    # pipe): every row left succeeded, each under its number in the sample (the caught row was
    # the last, so no row took its number); row 7 (tuan.ho, scope both) is two transfers, its
    # tickets after its conversations.
    for row in (2, 3, 4, 5, 6, 7):
        assert re.search(rf"^ *{row}  .*  succeeded( |$)", done.stdout, re.M), row
    assert not re.search(r"^ *8 ", done.stdout, re.M)
    assert re.search(
        r"^ *7 \(tickets\)  +tuan\.ho@example\.vn .*  succeeded( |$)", done.stdout, re.M
    )
    assert not re.search(r"long\.ly@example\.vn .*  succeeded", done.stdout)
    assert re.fullmatch(r"7 transfer\(s\) succeeded, confirmed by OMI's callbacks: \d+ "
                        r"conversation\(s\) and 2 ticket\(s\) moved\.", lines[-5])  # fmt: skip
    assert lines[-4] == ("Row 7 moved tuan.ho@example.vn's 2 open ticket(s) to "
                         "hanh.ngo@example.vn too, after its conversations.")  # fmt: skip
    assert lines[-3] == ("Row 2 was a chain: minh.tran@example.vn is leaving too, so "
                         "lan.nguyen@example.vn's conversations went straight to "
                         "hong.le@example.vn.")  # fmt: skip
    assert lines[-2] == ("Row 4 moved only 2 chosen conversation(s) of bao.pham@example.vn to "
                         "mai.hoang@example.vn, before the row that takes the rest.")  # fmt: skip
    assert lines[-1] == "Demo finished as designed (the row caught above is expected)."
    assert "Nguyễn Thị Lan" not in done.stdout  # names are in the reports, not the table
    reports = sorted(p.name.split("-", 3)[-1] for p in (out / "reports").iterdir())
    assert reports == ["preview.csv", "results.csv", "results.xlsx", "retry.csv", "review.xlsx",
                       "targets.csv"]  # fmt: skip
    for path in (out / "reports").iterdir():  # the demo lists each, the workbooks too
        assert f"  {path.name}" in lines, path.name
    preview = next((out / "reports").glob("*-preview.csv")).read_text(encoding="utf-8-sig")
    assert "Nguyễn Thị Lan nghỉ việc" in preview
    with Ledger(out / "ledger.db") as ledger:
        [batch] = ledger.batches()
        assert batch["base_url"] == address.group(1)
        assert ledger.verify().ok
    assert refused(address.group(1))  # the simulator was stopped


def test_the_demo_fails_loudly_when_the_flow_does_not_behave(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("source_email,target_email\nan.nguyen@example,binh.tran@example.vn\n")
    done = run_demo(tmp_path, "--csv", str(bad))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[-2] == ("The demo did not behave as designed: omi-batch validate found a problem "
                         "other than the designed one: row 2: bad_email: 'an.nguyen@example' is "
                         "not a valid email address.")  # fmt: skip
    assert lines[-1].startswith("Look at ")
    address = re.search(r"^OMI simulator listening on (http://\S+) ", done.stdout, re.M)
    assert refused(address.group(1))


# --------------------------------------------------------------------------- make offboard


@pytest.mark.parametrize("env, message", [
    ({"OMI_API_KEY": "k"},
     "OMI_BASE_URL is not set: use https://public-v1.omicall.com (or "
     "https://public-v1-stg.omicall.com for staging)"),
    ({"OMI_BASE_URL": "http://127.0.0.1:9"},
     "OMI_API_KEY is not set: create a key in the OMI web app (Account > Settings > API "
     "management)"),
    ({"OMI_BASE_URL": "public-v1.omicall.com", "OMI_API_KEY": "k"},
     "OMI_BASE_URL must start with http:// or https://: 'public-v1.omicall.com'"),
])  # fmt: skip
def test_offboard_names_the_missing_variable_and_exits_3(tmp_path, runner, env, message):
    """`make offboard CSV=…` runs `omi-batch run CSV`: configuration from the environment."""
    blank = dict.fromkeys(("OMI_BASE_URL", "OMI_API_KEY", "OMI_WEBHOOK_URL", "OMI_WEBHOOK_SECRET"))
    ledger = tmp_path / "ledger.db"
    result = runner.invoke(
        cli, ["run", str(SAMPLE), "--ledger", str(ledger), "--reports", str(tmp_path / "r")],
        env={**blank, **env},
    )  # fmt: skip
    assert result.exit_code == 3
    assert f"Error: {message}\n" in result.output
    assert not (tmp_path / "r").exists()
    assert not ledger.exists()  # nothing was created
