"""The ledger tells the truth about itself (issue 12): edits outside the chain are named, a
file that is not our ledger is refused, reading never writes, damage is exit 1."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess

import pytest

from omi_batch.cli import cli
from omi_batch.errors import LedgerError
from omi_batch.ledger import Ledger

ROWS = [
    {"row": number, "source_email": f"leaver{number}@example.vn",
     "target_email": f"keeper{number}@example.vn", "requested_target": f"keeper{number}@example.vn",
     "via": (), "conv_ids": (), "replace_existing_members": False, "note": "Nguyễn Văn An"}
    for number in (2, 3)
]  # fmt: skip


def callback(led, batch_id, row, status, request_id, updated=3):
    body = {"requestId": request_id, "status": status, "payload": {"updatedRecords": updated}}
    return led.receive_callback(batch_id=batch_id, row=row, phase="execute",
                                raw_body=json.dumps(body).encode(), headers={},
                                remote="127.0.0.1", body=body)  # fmt: skip


@pytest.fixture
def ran(ledger_path):
    """A batch whose row 2 succeeded and row 3 failed, both by callback: (path, batch id)."""
    with Ledger(ledger_path) as led:
        batch_id = led.create_batch(source_file="departures.csv", source_sha256="cd" * 32,
                                    created_by="hr-admin", base_url="http://127.0.0.1:9",
                                    options={}, input_rows=2, warnings=[], rows=ROWS)  # fmt: skip
        for row in (2, 3):
            led.record_step(
                batch_id, row, state="previewed", event="previewed", conversations_previewed=3
            )
        led.approve(batch_id, approve=[2, 3], by="hr-admin", how="all")
        for row in (2, 3):
            led.record_step(
                batch_id, row, state="submitted", event="submitted", request_id=f"req-{row}"
            )
        assert callback(led, batch_id, 2, "SUCCESS", "req-2") == "applied"
        assert callback(led, batch_id, 3, "ERROR", "req-3") == "applied"
    return ledger_path, batch_id


def verify(runner, path):
    return runner.invoke(cli, ["ledger", "verify", "--ledger", str(path)])


def sql(path, statement, params=()):
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(statement, params)
    finally:
        conn.close()


# --------------------------------------------------------------------------- 1: edits outside the chain


def test_a_failed_row_set_to_succeeded_with_sqlite_is_named_by_verify(runner, ran):
    path, batch_id = ran
    sql(path, """UPDATE "rows" SET state = 'succeeded', error = NULL WHERE "row" = 3""")
    result = verify(runner, path)
    assert result.exit_code == 1
    assert result.stdout == (
        f"Ledger tampered: row 3 of batch {batch_id} differs from its audit events: "
        "error is None in the table, 'OMI reported ERROR' in the events; "
        "state is 'succeeded' in the table, 'failed' in the events\n"
    )


def test_bytes_changed_in_the_rows_page_are_named_by_verify(runner, ran):
    path, batch_id = ran
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'rows'").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())  # checkpointed on close: the table is in the file
    page = slice((root - 1) * page_size, root * page_size)
    assert data[page].count(b"keeper3@example.vn") == 2  # target_email, requested_target
    data[page] = bytes(data[page]).replace(b"keeper3@example.vn", b"keeper9@example.vn", 1)
    path.write_bytes(bytes(data))
    result = verify(runner, path)
    assert result.exit_code == 1
    assert result.stdout == (
        f"Ledger tampered: row 3 of batch {batch_id} differs from its audit events: "
        "target_email is 'keeper9@example.vn' in the table, 'keeper3@example.vn' in the events\n"
    )


def _damage(path):
    """Zero the second half of the file: pages SQLite's integrity check finds broken."""
    data = bytearray(path.read_bytes())
    page = 4096
    for start in range(2 * page, len(data), 2 * page):
        data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def test_a_damaged_ledger_fails_verify_with_exit_1_naming_the_damage(runner, ran):
    path, _ = ran
    _damage(path)
    result = verify(runner, path)
    assert result.exit_code == 1
    assert result.stdout.startswith("Ledger damaged: ")


def test_export_of_a_damaged_ledger_is_one_clear_line_and_exit_1(runner, ran):
    path, batch_id = ran
    _damage(path)
    result = runner.invoke(cli, ["ledger", "export", batch_id, "--ledger", str(path)])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(f"Error: the ledger {path} is damaged or tampered: ")
    assert result.stderr.count("\n") == 1


def test_an_intact_ledger_still_verifies_after_replaying_its_rows(runner, ran):
    path, _ = ran
    result = verify(runner, path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Ledger intact: ")


# --------------------------------------------------------------------------- 2: not our file


def _version_0(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a)")
    conn.execute("DROP TABLE t")
    conn.commit()
    conn.close()


def _foreign(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()


NOT_A_LEDGER = {
    "emptied": (lambda p: p.write_bytes(b""),
                "is empty (0 bytes): it is not a ledger; restore it from a backup, or move it "
                "away to start a new ledger"),
    "version 0": (_version_0,
                  "is an SQLite file but not an omi-batch ledger (schema version 0, no ledger "
                  "tables); restore the ledger from a backup, or move it away to start a new one"),
    "foreign": (_foreign,
                "is an SQLite file but not an omi-batch ledger (schema version 7, no ledger "
                "tables); restore the ledger from a backup, or move it away to start a new one"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_A_LEDGER))
def test_a_file_that_is_not_our_ledger_is_refused_and_left_as_it_was(runner, ledger_path, case):
    make, problem = NOT_A_LEDGER[case]
    make(ledger_path)
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerError) as refused:
        Ledger(ledger_path)
    assert str(refused.value) == f"{ledger_path} {problem}"
    for command in (["status"], ["ledger", "verify"]):
        result = runner.invoke(cli, [*command, "--ledger", str(ledger_path)])
        assert (result.exit_code, result.stderr) == (3, f"Error: {ledger_path} {problem}\n")
    assert ledger_path.read_bytes() == before
    assert not ledger_path.with_name(ledger_path.name + "-wal").exists()


def test_a_ledger_deleted_but_whose_head_file_remains_is_not_created_afresh(ran):
    path, _ = ran
    head = json.loads(path.with_name("ledger.db.head").read_text())["id"]
    path.unlink()
    with pytest.raises(LedgerError) as refused:
        Ledger(path)
    assert str(refused.value) == (
        f"{path}.head names event {head}, but the ledger has none: it was deleted, replaced or "
        f"cut; restore it from a backup (or move {path.name}.head away to start a new ledger)"
    )
    assert not path.exists()


def test_a_ledger_replaced_by_a_shorter_one_is_refused(ran, tmp_path):
    path, _ = ran
    head = json.loads(path.with_name("ledger.db.head").read_text())["id"]
    other = tmp_path / "other.db"
    with Ledger(other) as led:
        led.log("one")
    shutil.copyfile(other, path)
    with pytest.raises(LedgerError) as refused:
        Ledger(path)
    assert str(refused.value) == (
        f"{path}.head names event {head}, but the ledger has 1: it was deleted, replaced or "
        f"cut; restore it from a backup (or move {path.name}.head away to start a new ledger)"
    )


# --------------------------------------------------------------------------- 3: reading writes nothing


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


@contextlib.contextmanager
def read_only(folder, files):
    """The folder and files made unwritable, even for root (who ignores permission bits):
    root gets the immutable attribute; skipped where the file system has none."""
    if os.geteuid() != 0:
        for item in files:
            item.chmod(0o444)
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
            for item in files:
                item.chmod(0o644)
        return
    if shutil.which("chattr") is None:
        pytest.skip("no chattr to make a folder read-only for root")
    targets = [str(f) for f in files] + [str(folder)]
    done = subprocess.run(["chattr", "+i", *targets], capture_output=True)
    if done.returncode != 0:
        pytest.skip("this file system cannot make a folder read-only for root (chattr +i)")
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
        yield
    finally:
        subprocess.run(["chattr", "-i", *targets], check=True)


def test_status_report_verify_and_export_work_on_a_read_only_folder(runner, ran, tmp_path):
    path, batch_id = ran
    files = [path, path.with_name("ledger.db.head")]
    before = _digest(path)
    reports = tmp_path / "out"
    reports.mkdir()  # a writable folder of its own: only the ledger's is read-only
    with read_only(path.parent, files):
        for command in (
            ["status"],
            ["status", batch_id],
            ["report", batch_id, "--reports", str(reports)],
            ["ledger", "verify"],
            ["ledger", "export", batch_id],
        ):
            result = runner.invoke(cli, [*command, "--ledger", str(path)])
            assert result.exit_code == 0, (command, result.output)
    assert _digest(path) == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("ledger.db")) == [
        "ledger.db", "ledger.db.head"
    ]  # fmt: skip
