"""The flow says what happened and what to do next, and it is right (issue #10, items 2, 5, 7,
8 and 9): resuming, configuration errors, batch states, cancel, and the end-of-run summary.

Commands run through click's CliRunner (or as a real process where a signal or a terminal is
needed) against the simulator over loopback HTTP, with a real ledger file.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from helpers import (
    FAST,
    SAMPLE_TEXT,
    TRANSFER,
    fail_preview,
    interrupted,
    invoke,
    read_report,
    transfers,
    use_simulator,
    where,
)

from omi_batch import webhook
from omi_batch.config import Secret
from omi_batch.ledger import Ledger
from omi_batch.simulator import Faults

ROOT = Path(__file__).resolve().parent.parent
assert "bao.pham@example.vn,anh.vu@example.vn,false,," in SAMPLE_TEXT
KEY = "flow-test-key-7d21c9a4"
SECRET = "flow-test-secret-e8b03f55"
BOX = re.compile("[━┃│╇┏┓┗┛╋─]")


# --------------------------------------------------------------------------- helpers


def use(monkeypatch, server, webhook_url: str | None = None) -> None:
    """Point this process's OMI_* at ``server`` (and at ``webhook_url``, if given)."""
    use_simulator(monkeypatch, server, KEY, SECRET)
    if webhook_url:
        monkeypatch.setenv("OMI_WEBHOOK_URL", webhook_url)


def child(args: list, **popen) -> subprocess.Popen:
    """``omi-batch ARGS`` as its own process, with this process's environment."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "omi_batch", *map(str, args)], env=env,
                            **popen)  # fmt: skip


def wait_until(check, seconds: float = 20.0, what: str = "") -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    pytest.fail(f"never happened: {what}")


def rows_of(ledger_path) -> list[dict]:
    with Ledger(ledger_path) as ledger:
        batches = ledger.batches()
        return ledger.rows(batches[0]["id"]) if batches else []


def only_batch(ledger_path) -> str:
    with Ledger(ledger_path) as ledger:
        [batch] = ledger.batches()
        return batch["id"]


def moved_by_request(sim, batch_id: str) -> dict[int, dict[str, int]]:
    """What each execute request moved, as the simulator reported it: {row: {request: n}}."""
    found: dict[int, dict[str, int]] = defaultdict(dict)
    for event in sim.events:
        match = re.search(rf"/callbacks/{batch_id}/(\d+)/execute$", event.get("url") or "")
        if event["kind"] == "callback" and match and event["body"]["status"] == "SUCCESS":
            found[int(match.group(1))][event["request_id"]] = event["body"]["payload"][
                "updatedRecords"
            ]
    return found


@pytest.fixture
def omi(make_simulator):
    """The sample simulator, answering to this module's key: ``(sim, server)``."""
    return make_simulator(api_key=KEY)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, file) -> str:
    use(monkeypatch, server)
    result = invoke(runner, "preview", file, *FAST, *where(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------- item 2


def test_a_resumed_execute_counts_what_every_request_of_a_row_moved(
    runner, make_simulator, monkeypatch, departures, ledger_path, reports_dir
):
    sim, server = make_simulator(api_key=KEY, faults=Faults(latency_ms=300, callback_delay=5))
    # The receiver runs as a service (`webhook serve`) on the same ledger: callbacks of the
    # interrupted run still arrive.
    receiver_ledger = Ledger(ledger_path)
    receiver = webhook.start(webhook.make_app(receiver_ledger, Secret(SECRET)), "127.0.0.1", 0)
    try:
        use(monkeypatch, server, receiver.url)
        result = invoke(runner, "preview", departures, "--rate", "1000",
                        *where(ledger_path, reports_dir))  # fmt: skip
        batch_id = result.stdout.strip().splitlines()[-1]
        assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
        code, _ = interrupted(["execute", batch_id, "--yes", "--rate", "1000", "--wait", "30",
                               *where(ledger_path, reports_dir)],
                              lambda: sum(r["state"] == "submitted" and bool(r["request_id"])
                                          for r in rows_of(ledger_path)) >= 4,
                              what="four rows accepted by OMI")  # fmt: skip
        assert code == 130
        sim.faults.callback_delay = 0.1  # the resent requests are answered first
        result = invoke(runner, "execute", batch_id, "--yes", "--rate", "1000", "--wait", "20",
                        *where(ledger_path, reports_dir))  # fmt: skip
        assert sim.wait_idle(timeout=20)  # the first requests' callbacks have come too
    finally:
        receiver.stop()
        receiver_ledger.close()
    moved = moved_by_request(sim, batch_id)
    resent = [n for n, requests in moved.items() if len(requests) > 1]
    assert resent, "no row was sent twice"
    with Ledger(ledger_path) as ledger:
        rows = {r["row"]: r for r in ledger.rows(batch_id)}
        kept = defaultdict(dict)
        for callback in ledger.callbacks(batch_id):
            if callback["phase"] == "execute":
                kept[callback["row"]][callback["request_id"]] = callback["updated_records"]
    for number, requests in moved.items():
        row = rows[number]
        assert row["state"] == "succeeded", row
        assert not row["needs_review"], row
        assert row["updated_records"] == sum(requests.values()), (number, requests)
        assert kept[number] == requests  # the ledger keeps each request's own figure
    assert all(sum(moved[n].values()) > 0 for n in resent)
    assert invoke(runner, "report", batch_id, *where(ledger_path, reports_dir)).exit_code == 0
    results = {int(r["row"]): r for r in read_report(reports_dir / f"{batch_id}-results.csv")}
    for number in resent:
        assert int(results[number]["updated_records"]) == sum(moved[number].values())


# --------------------------------------------------------------------------- item 5


def test_an_interrupted_run_names_the_command_that_finishes_its_preview(
    runner, make_simulator, monkeypatch, departures, ledger_path, reports_dir
):
    sim, server = make_simulator(api_key=KEY, faults=Faults(latency_ms=400))
    use(monkeypatch, server)
    code, text = interrupted(["run", departures, "--yes", "--concurrency", "1", "--rate", "1000",
                              *where(ledger_path, reports_dir)],
                             lambda: "previewed" in {r["state"] for r in rows_of(ledger_path)},
                             what="a row previewed")  # fmt: skip
    assert code == 130
    batch_id = only_batch(ledger_path)
    assert "planned" in {r["state"] for r in rows_of(ledger_path)}
    expected = f"omi-batch preview --batch {batch_id} {' '.join(where(ledger_path, reports_dir))}"
    assert f"Interrupted: state is saved; resume with: {expected}" in text
    assert "run the same command again" not in text
    sim.faults.latency_ms = 0
    before = transfers(sim, preview=True)
    result = invoke(runner, *shlex.split(expected)[1:])
    assert result.exit_code == 0, result.output
    assert only_batch(ledger_path) == batch_id  # no new batch
    rows = rows_of(ledger_path)
    assert {r["row"]: r["state"] for r in rows} == dict.fromkeys(range(2, 7), "previewed")
    again = transfers(sim, preview=True) - before
    done_before = {(r["source_email"], r["target_email"]) for r in rows
                   if r["previewed_at"] and before[(r["source_email"], r["target_email"])]}  # fmt: skip
    assert sum(again.values()) >= 1
    assert sum(again.values()) <= len(rows) - len(done_before) + 2  # + preflight + in-flight


def test_an_interrupted_run_names_the_execute_command_that_resumes_it(
    runner, make_simulator, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = make_simulator(api_key=KEY, faults=Faults(callback_delay=3))
    use(monkeypatch, server)
    code, text = interrupted(["run", departures, "--yes", "--rate", "1000", "--listen",
                              "127.0.0.1:0", "--wait", "30", *where(ledger_path, reports_dir)],
                             lambda: "submitted" in {r["state"] for r in rows_of(ledger_path)},
                             what="a row submitted")  # fmt: skip
    assert code == 130
    batch_id = only_batch(ledger_path)
    assert (
        f"Interrupted: state is saved; resume with: omi-batch execute {batch_id} --yes "
        f"{' '.join(where(ledger_path, reports_dir))} --listen 127.0.0.1:0"
    ) in text


def test_preview_batch_previews_again_only_the_rows_that_need_it(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    sim, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    fail_preview(ledger_path, batch_id, 6, "OMI answered 503: try again later")
    before = transfers(sim, preview=True)
    result = invoke(runner, "preview", "--batch", batch_id, *FAST,
                    *where(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: previewing 1 row(s) again" in result.stderr
    again = transfers(sim, preview=True) - before
    assert again == Counter({("hung.bui@example.vn", "ngoc.do@example.vn"): 2})  # + preflight
    assert only_batch(ledger_path) == batch_id
    assert {r["state"] for r in rows_of(ledger_path)} == {"previewed"}
    result = invoke(runner, "preview", "--batch", batch_id, "--max-age", "0", *FAST,
                    *where(ledger_path, reports_dir))  # fmt: skip
    assert f"Batch {batch_id}: previewing 5 row(s) again" in result.stderr
    assert only_batch(ledger_path) == batch_id


def test_preview_batch_says_the_approvals_it_withdraws(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    sim, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    result = invoke(runner, "preview", "--batch", batch_id, "--max-age", "0", *FAST,
                    *where(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "Warning: 5 approved row(s) previewed again must be approved again (the counts may have "
        "changed): their approvals were withdrawn"
    ) in result.stderr
    assert {r["state"] for r in rows_of(ledger_path)} == {"previewed"}


def test_preview_batch_replaces_an_untouched_workbook_and_keeps_an_edited_one(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    import openpyxl

    sim, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    book = Path(reports_dir) / f"{batch_id}-review.xlsx"
    again = ["preview", "--batch", batch_id, "--max-age", "0", *FAST,
             *where(ledger_path, reports_dir)]  # fmt: skip
    result = invoke(runner, *again)
    assert result.exit_code == 0, result.output
    assert f"--report {book}\n" in result.stderr  # untouched: the same name, written anew
    assert sorted(p.name for p in Path(reports_dir).glob("*-review*.xlsx")) == [book.name]
    workbook = openpyxl.load_workbook(book)
    sheet = workbook["Review"]
    column = [c.value for c in sheet[1]].index("approved") + 1
    sheet.cell(row=2, column=column, value="yes")  # a person's work
    workbook.save(book)
    result = invoke(runner, *again)
    assert result.exit_code == 0, result.output
    assert f"--report {book.with_name(f'{batch_id}-review-2.xlsx')}\n" in result.stderr
    assert openpyxl.load_workbook(book)["Review"].cell(row=2, column=column).value == "yes"


def test_preview_needs_either_a_file_or_a_batch(runner, env, departures, ledger_path, reports_dir):
    result = invoke(runner, "preview", *where(ledger_path, reports_dir))
    assert result.exit_code == 2
    assert "Error: say what to preview: a FILE, or --batch BATCH" in result.stderr


# --------------------------------------------------------------------------- item 7


def test_a_wrong_base_url_is_a_configuration_error_naming_the_url_tried(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    use(monkeypatch, server)
    monkeypatch.setenv("OMI_BASE_URL", f"{server.url}/omi")
    result = invoke(runner, "preview", departures, *FAST, *where(ledger_path, reports_dir))
    assert result.exit_code == 3, result.output
    assert (
        f"OMI answered 404 for every preview tried at {server.url}/omi{TRANSFER}: there is no "
        f"such endpoint there. Check OMI_BASE_URL ({server.url}/omi)"
    ) in result.stderr
    if ledger_path.exists():
        with Ledger(ledger_path) as ledger:
            assert ledger.batches() == []


def test_a_closed_port_names_the_url_it_tried(
    runner, env, monkeypatch, departures, ledger_path, reports_dir
):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("OMI_BASE_URL", url)
    result = invoke(runner, "preview", departures, *FAST, *where(ledger_path, reports_dir))
    assert result.exit_code == 3, result.output
    assert f"{url}{TRANSFER}" in result.stderr
    assert "OMI_BASE_URL" in result.stderr


# --------------------------------------------------------------------------- item 8


def test_a_batch_whose_approved_rows_all_succeeded_reads_succeeded(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    fail_preview(ledger_path, batch_id, 6)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    result = invoke(runner, "execute", batch_id, "--yes", *FAST, *where(ledger_path, reports_dir))
    assert result.exit_code == 0, result.output  # every approved row succeeded
    assert re.search(
        rf"Batch {batch_id}: 4 rows succeeded, 0 failed, 0 unconfirmed, 0 skipped, 1 failed its "
        r"preview; \d+ conversations moved\.",
        result.stderr,
    ), result.stderr
    status = json.loads(invoke(runner, "status", "--json", "--ledger", ledger_path).stdout)
    assert [b["state"] for b in status["batches"]] == ["succeeded"]


def test_status_shows_counts_per_state_and_the_preview_age(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    fail_preview(ledger_path, batch_id, 6)
    result = invoke(runner, "status", "--ledger", ledger_path)
    assert result.exit_code == 0
    [line] = [x for x in result.stdout.splitlines() if x.strip().startswith(batch_id)]
    assert "4 previewed, 1 preview_failed" in line
    assert re.search(r"\b\d+ (s|min|h) ago\b", line), line
    status = json.loads(invoke(runner, "status", "--json", "--ledger", ledger_path).stdout)
    assert status["batches"][0]["counts"] == {"previewed": 4, "preview_failed": 1}
    assert status["batches"][0]["previewed_at"]


def test_status_state_filters_batches_and_rows(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    waiting = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    fail_preview(ledger_path, waiting, 6)
    invoke(runner, "run", departures, "--yes", *FAST, *where(ledger_path, reports_dir))
    with Ledger(ledger_path) as ledger:
        done = ledger.batches()[0]["id"]
    result = invoke(runner, "status", "--state", "succeeded", "--json", "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert [b["batch"] for b in json.loads(result.stdout)["batches"]] == [done]
    result = invoke(runner, "status", "--state", "previewed", "--json", "--ledger", ledger_path)
    assert [b["batch"] for b in json.loads(result.stdout)["batches"]] == [waiting]
    result = invoke(runner, "status", waiting, "--state", "preview_failed", "--json",
                    "--ledger", ledger_path)  # fmt: skip
    assert [r["row"] for r in json.loads(result.stdout)["rows"]] == [6]
    result = invoke(runner, "status", "--state", "nonsense", "--ledger", ledger_path)
    assert result.exit_code == 2


def test_an_interrupted_batch_is_not_shown_executing_when_nothing_runs(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    with Ledger(ledger_path) as ledger:  # what a killed execute leaves behind
        ledger.record_step(batch_id, 2, state="submitted", event="submitted", expect=["approved"],
                         submitted_at="2026-01-01T00:00:00.000Z")  # fmt: skip
    status = json.loads(invoke(runner, "status", "--json", "--ledger", ledger_path).stdout)
    assert status["batches"][0]["state"] == "interrupted"
    result = invoke(runner, "status", batch_id, "--ledger", ledger_path)
    assert f"Next: omi-batch execute {batch_id}" in result.stderr


def test_a_killed_execute_reads_executing_while_it_runs_and_interrupted_after(
    runner, make_simulator, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = make_simulator(api_key=KEY, faults=Faults(callback_delay=30))
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0

    def word() -> str:
        result = invoke(runner, "status", "--json", "--ledger", ledger_path)
        return json.loads(result.stdout)["batches"][0]["state"]

    process = child(["execute", batch_id, "--yes", "--rate", "1000", "--listen", "127.0.0.1:0",
                     "--wait", "60", *where(ledger_path, reports_dir)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: "submitted" in {r["state"] for r in rows_of(ledger_path)},
                   what="a row submitted")  # fmt: skip
        assert word() == "executing"  # another process holds the batch's lock
        process.kill()  # no chance to clean up: what a crash or a lost machine leaves
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert "submitted" in {r["state"] for r in rows_of(ledger_path)}
    assert word() == "interrupted"


def test_status_does_not_point_at_an_execute_that_would_only_hold_its_rows_again(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    fail_preview(ledger_path, batch_id, 4)  # row 5, the catch-all of its source, is held by it
    with Ledger(ledger_path) as ledger:  # the other rows ran and succeeded
        for row in (2, 3, 6):
            ledger.record_step(batch_id, row, state="submitted", event="submitted")
            ledger.record_step(batch_id, row, state="succeeded", event="callback_applied",
                               updated_records=1)  # fmt: skip
    result = invoke(runner, "status", batch_id, "--ledger", ledger_path)
    assert result.exit_code == 0
    assert "Next: omi-batch execute" not in result.stderr
    assert ("Nothing to execute: every approved row is held behind a row of its source that "
            "did not succeed") in result.stderr  # fmt: skip


def test_a_batch_being_executed_reads_executing_and_cannot_be_cancelled(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    from omi_batch.pipeline import BatchLock

    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    with Ledger(ledger_path) as ledger:
        ledger.record_step(batch_id, 2, state="submitted", event="submitted", expect=["approved"],
                           submitted_at="2026-01-01T00:00:00.000Z")  # fmt: skip
    with BatchLock(ledger_path, batch_id):  # what a running execute holds
        status = json.loads(invoke(runner, "status", "--json", "--ledger", ledger_path).stdout)
        assert status["batches"][0]["state"] == "executing"
        result = invoke(runner, "cancel", batch_id, "--ledger", ledger_path)
        assert result.exit_code == 2
        assert f"Error: batch {batch_id} is being executed by another process" in result.stderr
    assert "cancelled" not in {r["state"] for r in rows_of(ledger_path)}


def test_cancel_abandons_a_batch_that_will_not_be_run(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    sim, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    result = invoke(runner, "cancel", batch_id, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id} cancelled: nothing of it will be sent." in result.stderr
    status = json.loads(invoke(runner, "status", "--json", "--ledger", ledger_path).stdout)
    assert status["batches"][0]["state"] == "cancelled"
    with Ledger(ledger_path) as ledger:
        assert [e["kind"] for e in ledger.events(batch_id)][-6:] == ["cancelled"] * 5 + [
            "batch_cancelled"]  # fmt: skip
        assert {r["state"] for r in ledger.rows(batch_id)} == {"cancelled"}
    assert invoke(runner, "ledger", "verify", "--ledger", ledger_path).exit_code == 0
    for args in (["approve", batch_id, "--all"],
                 ["execute", batch_id, "--yes", *FAST, "--reports", reports_dir],
                 ["preview", "--batch", batch_id, *FAST, "--reports", reports_dir]):  # fmt: skip
        result = invoke(runner, *args, "--ledger", ledger_path)
        assert result.exit_code == 2, args
        assert f"Error: batch {batch_id} was cancelled" in result.stderr
        assert "previewing" not in result.stderr  # refused before anything is said to run
    assert sum(transfers(sim, preview=False).values()) == 0


def test_cancel_is_refused_once_anything_was_submitted(
    runner, env, departures, ledger_path, reports_dir
):
    invoke(runner, "run", departures, "--yes", *FAST, *where(ledger_path, reports_dir))
    batch_id = only_batch(ledger_path)
    result = invoke(runner, "cancel", batch_id, "--ledger", ledger_path)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"Error: batch {batch_id} cannot be cancelled: 5 row(s) were already submitted to OMI"
    )
    status = json.loads(invoke(runner, "status", "--json", "--ledger", ledger_path).stdout)
    assert status["batches"][0]["state"] == "succeeded"


def test_approving_nothing_does_not_point_at_an_execute_that_would_do_nothing(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir, tmp_path
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    report = reports_dir / f"{batch_id}-preview.csv"
    result = invoke(runner, "approve", batch_id, "--report", report, "--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    assert f"Batch {batch_id}: 0 row(s) approved, 5 skipped." in result.stderr
    assert "Next: omi-batch execute" not in result.stderr


def test_a_preview_where_every_row_failed_does_not_point_at_approve(
    runner, make_simulator, monkeypatch, departures, ledger_path, reports_dir
):
    # Counts come by callback and no receiver is set: every row fails its preview, saying why.
    _, server = make_simulator(api_key=KEY, preview_mode="async")
    use(monkeypatch, server)
    result = invoke(runner, "preview", departures, "--rate", "1000",
                    *where(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 1
    assert {r["state"] for r in rows_of(ledger_path)} == {"preview_failed"}
    assert "omi-batch approve" not in result.stderr
    assert "Nothing to approve: no row previewed ok" in result.stderr


def test_approve_points_at_an_execute_with_a_receiver_when_none_is_configured(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    result = invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path)
    assert f"Next: omi-batch execute {batch_id} --listen 127.0.0.1:8080" in result.stderr


def test_execute_without_a_receiver_says_rows_will_end_unconfirmed_before_sending(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    assert invoke(runner, "approve", batch_id, "--all", "--ledger", ledger_path).exit_code == 0
    result = invoke(runner, "execute", batch_id, "--yes", "--rate", "1000",
                    *where(ledger_path, reports_dir))  # fmt: skip
    assert result.exit_code == 1
    warning = (
        "Warning: no webhook receiver (set OMI_WEBHOOK_URL, or use --listen HOST:PORT): OMI "
        "cannot report the results, so the 5 row(s) will end unconfirmed"
    )
    assert warning in result.stderr
    assert result.stderr.index(warning) < result.stderr.index(f"Batch {batch_id}: executing")


# --------------------------------------------------------------------------- item 9


def test_the_end_of_a_run_is_a_summary_a_manager_can_read(
    runner, env, departures, ledger_path, reports_dir
):
    result = invoke(runner, "run", departures, "--yes", *FAST, *where(ledger_path, reports_dir))
    batch_id = only_batch(ledger_path)
    rows = rows_of(ledger_path)
    moved = sum(r["updated_records"] or 0 for r in rows)
    assert (
        f"Batch {batch_id}: 5 rows succeeded, 0 failed, 0 unconfirmed, 0 skipped; "
        f"{moved} conversations moved."
    ) in result.stderr
    received: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["updated_records"] is not None:
            received[r["target_email"]] += r["updated_records"]
    lines = result.stderr.splitlines()
    start = lines.index("Conversations received, per target agent:")
    shown = dict(re.fullmatch(r"  (\S+)\s+(\d+)", x).groups() for x in lines[start + 1 :][:4])
    assert {k: int(v) for k, v in shown.items()} == received


def test_the_targets_report_says_what_each_target_received(
    runner, env, departures, ledger_path, reports_dir
):
    invoke(runner, "run", departures, "--yes", *FAST, *where(ledger_path, reports_dir))
    batch_id = only_batch(ledger_path)
    targets = read_report(reports_dir / f"{batch_id}-targets.csv")
    assert list(targets[0]) == ["target_email", "sources", "conversations", "moved"]
    received: dict[str, int] = defaultdict(int)
    for r in rows_of(ledger_path):
        if r["updated_records"] is not None:
            received[r["target_email"]] += r["updated_records"]
    assert {t["target_email"]: int(t["moved"]) for t in targets} == received


def test_the_targets_report_of_a_preview_has_no_moved_column(
    runner, omi, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = omi
    batch_id = previewed_batch(runner, monkeypatch, server, ledger_path, reports_dir, departures)
    targets = read_report(reports_dir / f"{batch_id}-targets.csv")
    assert list(targets[0]) == ["target_email", "sources", "conversations"]


def test_in_a_pipe_no_table_borders_and_no_path_printed_twice(
    runner, env, departures, ledger_path, reports_dir
):
    result = invoke(runner, "run", departures, "--yes", *FAST, *where(ledger_path, reports_dir))
    batch_id = only_batch(ledger_path)
    assert not BOX.search(result.stdout), result.stdout
    for kind in ("preview", "targets", "results", "retry"):
        path = str(reports_dir / f"{batch_id}-{kind}.csv")
        assert result.output.count(path) == 1, (kind, result.output)
    status = invoke(runner, "status", "--ledger", ledger_path).stdout
    assert not BOX.search(status), status


def on_a_terminal(args: list, monkeypatch, columns: int, *, stream: str) -> str:
    """What ``omi-batch ARGS`` writes on ``stream`` (stdout or stderr) when it is a terminal
    ``columns`` wide, colour codes removed."""
    import pty

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", str(columns))
    master, slave = pty.openpty()
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: slave}
    process = child(args, stdin=subprocess.DEVNULL, **streams)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None:
                break
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(master)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode("utf-8", "replace"))


def test_the_progress_bar_on_a_terminal_shows_rate_and_eta(
    make_simulator, monkeypatch, departures, ledger_path, reports_dir
):
    _, server = make_simulator(api_key=KEY, faults=Faults(latency_ms=150))
    use(monkeypatch, server)
    text = on_a_terminal(["preview", departures, "--concurrency", "1", "--rate", "1000",
                          *where(ledger_path, reports_dir)], monkeypatch, 120, stream="stderr")  # fmt: skip
    assert re.search(r"\d+(\.\d+)? rows/s", text), text
    assert re.search(r"eta (\d+:\d\d:\d\d|-:--:--)", text), text


@pytest.mark.parametrize("columns", [110, 200])
def test_the_plan_on_a_narrow_terminal_keeps_every_email_whole(monkeypatch, departures, columns):
    text = on_a_terminal(["validate", departures], monkeypatch, columns, stream="stdout")
    lines = text.splitlines()
    for email in ("lan.nguyen@example.vn", "hong.le@example.vn", "minh.tran@example.vn",
                  "mai.hoang@example.vn", "bao.pham@example.vn", "ngoc.do@example.vn"):  # fmt: skip
        assert email in text, (email, text)
    assert max(len(line) for line in lines) <= columns, text
