"""Moving a departing agent's tickets with the conversations (issue 15), over loopback against
the simulator: each (row, kind) is its own transfer, confirmed by its own callback or by a
verifying preview, run after its source's conversation rows and held like them."""

from __future__ import annotations

import csv
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
from helpers import (
    approved_batch,
    departures_csv,
    execute_interrupted,
    use_simulator,
)

from omi_batch.cli import cli
from omi_batch.errors import InputError
from omi_batch.ledger import Ledger
from omi_batch.roster import read_plan
from omi_batch.simulator import Faults

ROOT = Path(__file__).resolve().parent.parent
CSV = """source_email,target_email,replace_existing_members,conv_ids,scope,note
tuan.ho@example.vn,hanh.ngo@example.vn,false,,both,Hồ Văn Tuấn nghỉ việc
hung.bui@example.vn,ngoc.do@example.vn,false,,,
minh.tran@example.vn,hong.le@example.vn,false,,tickets,chỉ chuyển ticket
"""
TICKET_PATH = "/api/v3/agent/ticket/transfer"
CONVERSATION_PATH = "/api/v3/agent/conversation/transfer"
# No row replaces members, so the sources running side by side leave each other's counts alone.
PERMISSION = "your key lacks the permission to assign other agents' tickets"


@pytest.fixture
def csv_file(tmp_path):
    return departures_csv(tmp_path, CSV)


def states(ledger, batch_id) -> dict[tuple[int, str], str]:
    return {(r["row"], r["kind"]): r["state"] for r in ledger.rows(batch_id)}


def executes(sim) -> list[tuple[str, str]]:
    """The execute requests OMI received, in order: ``(kind, source)``."""
    found = []
    for event in sim.events:
        body = event.get("body")
        if event["kind"] != "request" or not isinstance(body, dict) or body.get("previewChanges"):
            continue
        kind = {TICKET_PATH: "tickets", CONVERSATION_PATH: "conversations"}.get(event["path"])
        if kind:
            found.append((kind, body["sourceEmail"]))
    return found


def open_tickets(sim, agent: str) -> int:
    return sum(1 for t in sim.tickets if t["assignee"] == agent and t["status"] != "closed")


def test_run_moves_conversations_and_tickets_each_confirmed_by_its_own_callback(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator()
    stack = make_stack(server)

    batch_id = stack.run(csv_file)

    rows = {(r["row"], r["kind"]): r for r in stack.ledger.rows(batch_id)}
    assert {k: r["state"] for k, r in rows.items()} == {
        (2, "conversations"): "succeeded", (2, "tickets"): "succeeded",
        (3, "conversations"): "succeeded", (4, "tickets"): "succeeded",
    }  # fmt: skip
    assert all(r["verified_by"] == "callback" for r in rows.values())
    assert (rows[2, "conversations"]["updated_records"], rows[2, "tickets"]["updated_records"],
            rows[4, "tickets"]["updated_records"]) == (12, 2, 4)  # fmt: skip
    assert rows[2, "tickets"]["conversations_previewed"] == 2
    assert rows[2, "tickets"]["request_id"] != rows[2, "conversations"]["request_id"]
    assert open_tickets(sim, "tuan.ho@example.vn") == open_tickets(sim, "minh.tran@example.vn") == 0
    sent = executes(sim)
    assert Counter(sent) == Counter({("conversations", "tuan.ho@example.vn"): 1,
                                     ("tickets", "tuan.ho@example.vn"): 1,
                                     ("conversations", "hung.bui@example.vn"): 1,
                                     ("tickets", "minh.tran@example.vn"): 1})  # fmt: skip
    tuan = [kind for kind, source in sent if source == "tuan.ho@example.vn"]
    assert tuan == ["conversations", "tickets"]  # the tickets after the source's conversations
    phases = {(c["row"], c["phase"], c["verdict"]) for c in stack.ledger.callbacks(batch_id)}
    assert {(2, "execute", "applied"), (2, "tickets-execute", "applied"),
            (4, "tickets-execute", "applied")} <= phases  # fmt: skip
    assert stack.ledger.verify().ok


def test_a_ticket_preview_count_sent_by_callback_reaches_the_ticket_transfer(
    make_simulator, tmp_path, csv_file, make_stack
):
    _, server = make_simulator(ticket_preview_mode="async")
    stack = make_stack(server)

    batch_id = stack.pipeline.create_batch(read_plan(csv_file))
    stack.pipeline.preview(batch_id)

    counts = {(r["row"], r["kind"]): r["conversations_previewed"]
              for r in stack.ledger.rows(batch_id)}  # fmt: skip
    assert counts == {(2, "conversations"): 12, (2, "tickets"): 2, (3, "conversations"): 17,
                      (4, "tickets"): 4}  # fmt: skip
    stored = [(c["row"], c["verdict"]) for c in stack.ledger.callbacks(batch_id)
              if c["phase"] == "tickets-preview"]  # fmt: skip
    assert sorted(stored) == [(2, "stored"), (4, "stored")]


def test_without_ticket_callbacks_the_ticket_transfer_is_unconfirmed_until_reconcile_verifies_it(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator(ticket_callbacks=False)
    stack = make_stack(server, wait=3)  # the conversations callbacks come within it under load

    batch_id = stack.run(csv_file)

    assert states(stack.ledger, batch_id) == {
        (2, "conversations"): "succeeded", (2, "tickets"): "unconfirmed",
        (3, "conversations"): "succeeded", (4, "tickets"): "unconfirmed",
    }  # fmt: skip
    assert stack.ledger.row(batch_id, 2, "tickets")["error"] == "no callback within 3 s"
    assert open_tickets(sim, "tuan.ho@example.vn") == 0  # moved, but nobody said so yet

    stack.pipeline.reconcile(batch_id)

    tickets = stack.ledger.rows(batch_id, kind="tickets")
    assert [(r["row"], r["state"], r["verified_by"]) for r in tickets] == [
        (2, "succeeded", "preview"), (4, "succeeded", "preview")]  # fmt: skip
    assert stack.ledger.verify().ok


def test_reconcile_leaves_a_ticket_transfer_unconfirmed_while_tickets_are_left_to_move(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator(ticket_callbacks=False)
    stack = make_stack(server, wait=1)
    batch_id = stack.approved(csv_file)
    sim.faults.callback_error_rate = 1.0  # OMI moves nothing (and sends no ticket callback)
    stack.pipeline.execute(batch_id)
    sim.faults.callback_error_rate = 0.0

    stack.pipeline.reconcile(batch_id)

    ticket = stack.ledger.row(batch_id, 4, "tickets")
    assert (ticket["state"], ticket["error"]) == ("unconfirmed",
                                                  "reconcile: 4 ticket(s) still to move")  # fmt: skip
    assert stack.ledger.row(batch_id, 2)["state"] == "failed"  # its ERROR callback said so
    held = stack.ledger.row(batch_id, 2, "tickets")  # so its source's tickets never went
    assert (held["state"], held["error"]) == ("approved",
                                              "held: row 2 of the same source is failed")  # fmt: skip


def test_permission_denied_fails_only_the_ticket_transfer_and_names_the_permission(
    make_simulator, tmp_path, csv_file, make_stack
):
    sim, server = make_simulator()
    stack = make_stack(server)
    batch_id = stack.approved(csv_file)
    sim.faults.ticket_fault = "permission_denied"  # the key's role changed since the preview

    summary = stack.pipeline.execute(batch_id, reports_dir=tmp_path / "reports")

    assert summary.stopped is None
    assert states(stack.ledger, batch_id) == {
        (2, "conversations"): "succeeded", (2, "tickets"): "failed",
        (3, "conversations"): "succeeded", (4, "tickets"): "failed",
    }  # fmt: skip
    assert PERMISSION in stack.ledger.row(batch_id, 2, "tickets")["error"]
    with open(summary.reports["results"], encoding="utf-8-sig", newline="") as handle:
        results = {int(r["row"]): r for r in csv.DictReader(handle)}
    assert (results[2]["status"], results[2]["conversations_status"],
            results[2]["tickets_status"]) == ("failed", "succeeded", "failed")  # fmt: skip
    assert PERMISSION in results[2]["tickets_error"]
    with open(summary.reports["retry"], encoding="utf-8-sig", newline="") as handle:
        retry = list(csv.DictReader(handle))
    assert [(r["source_email"], r["scope"]) for r in retry] == [
        ("tuan.ho@example.vn", "tickets"), ("minh.tran@example.vn", "tickets")]  # fmt: skip


def test_a_ticket_preview_refused_for_the_permission_is_not_approved_and_says_why(
    make_simulator, tmp_path, csv_file, make_stack
):
    _, server = make_simulator(faults=Faults(ticket_fault="permission_denied"))
    stack = make_stack(server)
    batch_id = stack.pipeline.create_batch(read_plan(csv_file))
    stack.pipeline.preview(batch_id)
    notes: list[str] = []

    chosen, _ = stack.pipeline.approve(batch_id, approve_all=True, notes=notes)

    assert chosen == [2, 3]
    assert states(stack.ledger, batch_id) == {
        (2, "conversations"): "approved", (2, "tickets"): "preview_failed",
        (3, "conversations"): "approved", (4, "tickets"): "preview_failed",
    }  # fmt: skip
    assert PERMISSION in stack.ledger.row(batch_id, 4, "tickets")["preview_error"]
    assert len(notes) == 1 and notes[0].startswith("row 2's tickets failed their preview (")


def test_the_ticket_transfer_is_held_when_a_conversation_row_of_its_source_did_not_succeed(
    make_simulator, tmp_path, make_stack
):
    sim, server = make_simulator()
    path = tmp_path / "departures.csv"
    path.write_text("source_email,target_email,scope\n"
                    "tuan.ho@example.vn,long.ly@example.vn,conversations\n"
                    "tuan.ho@example.vn,hanh.ngo@example.vn,tickets\n")  # fmt: skip
    stack = make_stack(server)
    # long.ly has no account: unchecked, its preview fails (the directory would stop the batch)
    batch_id = stack.pipeline.create_batch(read_plan(path), check_agents=False)
    stack.pipeline.preview(batch_id)
    stack.pipeline.approve(batch_id, approve_all=True)

    stack.pipeline.execute(batch_id)

    ticket = stack.ledger.row(batch_id, 3, "tickets")
    assert (ticket["state"], ticket["error"]) == (
        "approved",
        "held: row 2 of the same source is preview_failed",
    )
    assert executes(sim) == []
    assert open_tickets(sim, "tuan.ho@example.vn") == 2


def test_approve_takes_a_report_with_the_tickets_column_and_refuses_an_edit_of_it(
    make_simulator, tmp_path, csv_file, make_stack
):
    _, server = make_simulator()
    stack = make_stack(server)
    batch_id = stack.pipeline.create_batch(read_plan(csv_file))
    stack.pipeline.preview(batch_id)
    report = stack.pipeline.preview_summary(batch_id, tmp_path / "reports").reports["preview"]
    with open(report, encoding="utf-8-sig", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [(r["row"], r["scope"], r["conversations"], r["tickets"]) for r in lines] == [
        ("2", "both", "12", "2"),
        ("3", "conversations", "17", ""),
        ("4", "tickets", "", "4"),
    ]

    def write(edit):
        edited = [dict(r, approved="yes") for r in lines]
        edit(edited)
        path = tmp_path / "edited.csv"
        with open(path, "w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(lines[0]))
            writer.writeheader()
            writer.writerows(edited)
        return path

    with pytest.raises(InputError) as refused:
        stack.pipeline.approve(batch_id, report_file=write(lambda e: e[0].update(tickets="9")))
    assert refused.value.problems[0] == (
        "row 2: tickets is '9' in the report but '2' in the ledger: approve records only the "
        "approved and note columns"
    )
    chosen, skipped = stack.pipeline.approve(batch_id, report_file=write(
        lambda e: e[1].update(approved="no")))  # fmt: skip

    assert (chosen, skipped) == ([2, 4], [3])
    assert states(stack.ledger, batch_id) == {
        (2, "conversations"): "approved", (2, "tickets"): "approved",
        (3, "conversations"): "skipped", (4, "tickets"): "approved",
    }  # fmt: skip


def ticket_counts(sim) -> Counter:
    """Execute requests per (row, kind), read from their callback URLs."""
    found: Counter = Counter()
    for event in sim.events:
        body = event.get("body")
        if event["kind"] != "request" or not isinstance(body, dict) or body.get("previewChanges"):
            continue
        url = (body.get("callbackResultConfig") or {}).get("url", "")
        if "/callbacks/" in url:
            _, row, phase = url.rsplit("/", 2)
            found[int(row), "tickets" if phase.startswith("tickets-") else "conversations"] += 1
    return found


def test_execute_killed_mid_batch_with_both_kinds_resumes_and_every_transfer_ends_right(
    runner, make_simulator, monkeypatch, tmp_path, csv_file
):
    sim, server = make_simulator(faults=Faults(callback_delay=0.4))
    ledger_path, reports_dir = tmp_path / "ledger.db", tmp_path / "reports"
    batch_id = approved_batch(tmp_path, server, csv_file)
    use_simulator(monkeypatch, server)
    code, _ = execute_interrupted(batch_id, ledger_path, reports_dir, signal.SIGKILL, tmp_path)
    with Ledger(ledger_path) as ledger:
        confirmed = {(r["row"], r["kind"]) for r in ledger.rows(batch_id, ["succeeded"])}
    assert code == -signal.SIGKILL
    before = ticket_counts(sim)
    assert confirmed and all(before[key] == 1 for key in confirmed)

    result = runner.invoke(cli, ["execute", batch_id, "--yes", "--rate", "1000", "--wait", "10",
                                 "--listen", "127.0.0.1:0", "--ledger", str(ledger_path),
                                 "--reports", str(reports_dir)])  # fmt: skip

    assert result.exit_code == 0, result.output
    sent = ticket_counts(sim)
    with Ledger(ledger_path) as ledger:
        assert states(ledger, batch_id) == {
            (2, "conversations"): "succeeded", (2, "tickets"): "succeeded",
            (3, "conversations"): "succeeded", (4, "tickets"): "succeeded",
        }  # fmt: skip
        assert ledger.verify().ok
    assert set(sent) == {(2, "conversations"), (2, "tickets"), (3, "conversations"),
                         (4, "tickets")}  # fmt: skip
    for key in confirmed:
        assert sent[key] == 1, f"confirmed transfer {key} was submitted again"
    assert open_tickets(sim, "tuan.ho@example.vn") == open_tickets(sim, "minh.tran@example.vn") == 0


def test_omi_batch_run_moves_tickets_and_status_names_each_ticket_transfer(
    runner, env, csv_file, ledger_path, reports_dir
):
    import json

    common = ["--ledger", str(ledger_path), "--reports", str(reports_dir)]
    done = runner.invoke(cli, ["run", str(csv_file), "--yes", "--listen", "127.0.0.1:0",
                               "--wait", "10", *common])  # fmt: skip

    assert done.exit_code == 0, done.output
    with Ledger(ledger_path) as ledger:
        batch_id = ledger.batches()[0]["id"]
    # the results table says which line is a ticket transfer
    assert re.search(r"^ *2 \(tickets\) +tuan\.ho@example\.vn ", done.stdout, re.M)
    table = runner.invoke(cli, ["status", batch_id, "--ledger", str(ledger_path)])
    assert re.search(r"^ *2 \(tickets\) +tuan\.ho@example\.vn ", table.stdout, re.M)
    shown = runner.invoke(cli, ["status", batch_id, "--json", "--ledger", str(ledger_path)])
    assert shown.exit_code == 0, (batch_id, shown.output)
    rows = json.loads(shown.stdout)["rows"]
    assert [(r["row"], r.get("kind"), r["state"]) for r in rows] == [
        (2, None, "succeeded"), (2, "tickets", "succeeded"), (3, None, "succeeded"),
        (4, "tickets", "succeeded")]  # fmt: skip
    assert all(r["updated_records"] == r["conversations_previewed"] > 0 for r in rows), rows
    with open(reports_dir / f"{batch_id}-results.csv", encoding="utf-8-sig") as handle:
        results = list(csv.DictReader(handle))
    assert [(r["row"], r["scope"], r["status"], r["tickets_status"], r["tickets_moved"])
            for r in results] == [("2", "both", "succeeded", "succeeded", "2"),
                                  ("3", "conversations", "succeeded", "", ""),
                                  ("4", "tickets", "succeeded", "succeeded", "4")]  # fmt: skip
