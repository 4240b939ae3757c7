"""A row that moves conversations and tickets is two transfers in the ledger (issue 15): each
with its own state, request id, callback URL and credential; ledgers from before keep working."""

from __future__ import annotations

import json
import sqlite3

import pytest
import requests
from helpers import BOTH, CONVERSATIONS, OLD_BATCH, SECRET, TICKETS_ONLY, TIMEOUT, old_ledger, send

from omi_batch import callbacks
from omi_batch import ledger as ledger_module
from omi_batch.errors import IllegalTransition
from omi_batch.ledger import Ledger
from omi_batch.webhook import make_app, start


def new_batch(led: Ledger, rows=(BOTH, TICKETS_ONLY, CONVERSATIONS)) -> str:
    return led.create_batch(source_file="departures.csv", source_sha256="ab" * 32,
                            created_by="hr-admin", base_url="http://127.0.0.1:9", options={},
                            input_rows=3, warnings=[], rows=list(rows))  # fmt: skip


def submit(led: Ledger, batch: str, row: int, kind: str, request_id: str) -> None:
    for state in ("previewed", "approved"):
        led.record_step(batch, row, state=state, event=state, kind=kind)
    led.record_step(batch, row, state="submitted", event="submitted", kind=kind,
                    request_id=request_id)  # fmt: skip


def body(request_id: str, action: str = "TICKET_AGENT_TRANSFER", updated: int = 2) -> dict:
    return {"requestId": request_id, "requestTimeMs": 1764062400000, "action": action,
            "status": "SUCCESS", "responseTimeMs": 1764062401234,
            "payload": {"updatedRecords": updated}}  # fmt: skip


def deliver(led: Ledger, batch: str, row: int, phase: str, data: dict) -> str:
    return led.receive_callback(batch_id=batch, row=row, phase=phase,
                                raw_body=json.dumps(data).encode(), headers={},
                                remote="127.0.0.1", body=data)  # fmt: skip


def test_a_row_with_scope_both_becomes_a_conversation_and_a_ticket_transfer(led):
    batch = new_batch(led)

    found = [(r["row"], r["kind"], r["state"]) for r in led.rows(batch)]
    assert found == [
        (2, "conversations", "planned"),
        (2, "tickets", "planned"),
        (3, "tickets", "planned"),
        (4, "conversations", "planned"),
    ]
    assert [r["row"] for r in led.rows(batch, kind="tickets")] == [2, 3]
    assert led.row(batch, 2)["kind"] == "conversations"
    assert led.row(batch, 3, "tickets")["source_email"] == "an.nguyen@example.vn"
    assert led.batch(batch)["states"] == {"planned": 4}
    assert led.verify().ok


def test_each_transfer_of_a_row_moves_on_its_own(led):
    batch = new_batch(led)

    led.record_step(batch, 2, state="previewed", event="previewed", kind="tickets",
                    conversations_previewed=2)  # fmt: skip
    led.record_step(batch, 2, state="preview_failed", event="preview_failed",
                    preview_error="no such agent")  # fmt: skip

    assert led.row(batch, 2, "tickets")["state"] == "previewed"
    assert led.row(batch, 2, "tickets")["conversations_previewed"] == 2
    assert led.row(batch, 2)["state"] == "preview_failed"
    with pytest.raises(IllegalTransition, match=r"row 2 \(tickets\) of batch .* cannot go from "
                       "previewed to submitted"):  # fmt: skip
        led.record_step(batch, 2, state="submitted", event="submitted", kind="tickets")
    with pytest.raises(Exception, match=r"no row 4 \(tickets\) in batch"):
        led.row(batch, 4, "tickets")
    assert led.verify().ok


def test_approving_a_row_number_approves_each_of_its_transfers_and_a_pair_only_one(led):
    batch = new_batch(led)
    for row, kind in ((2, "conversations"), (2, "tickets"), (3, "tickets"), (4, "conversations")):
        led.record_step(batch, row, state="previewed", event="previewed", kind=kind)

    assert led.approve(batch, approve=[2, (3, "tickets")], skip=[(4, "conversations")],
                       by="hr", how="all") == 3  # fmt: skip

    states = {(r["row"], r["kind"]): r["state"] for r in led.rows(batch)}
    assert states == {(2, "conversations"): "approved", (2, "tickets"): "approved",
                      (3, "tickets"): "approved", (4, "conversations"): "skipped"}  # fmt: skip
    kinds = [r["kind"] for r in led.export(batch) if r["type"] == "approval"]
    assert sorted(kinds) == ["conversations", "conversations", "tickets", "tickets"]
    assert led.verify().ok


def test_a_ticket_callback_settles_the_ticket_transfer_and_not_the_conversations(led):
    batch = new_batch(led)
    submit(led, batch, 2, "conversations", "req-conv")
    submit(led, batch, 2, "tickets", "req-tick")

    assert deliver(led, batch, 2, "tickets-execute", body("req-tick", updated=2)) == "applied"

    tickets, conversations = led.row(batch, 2, "tickets"), led.row(batch, 2)
    assert (tickets["state"], tickets["updated_records"], tickets["verified_by"]) == (
        "succeeded",
        2,
        "callback",
    )
    assert (conversations["state"], conversations["updated_records"]) == ("submitted", None)
    # the ticket transfer's request id on the conversations URL names another transfer
    assert deliver(led, batch, 2, "execute", body("req-tick", "CONVERSATION_AGENT_TRANSFER")) == (
        "unexpected"
    )
    assert led.row(batch, 2)["state"] == "submitted"
    assert deliver(led, batch, 2, "execute",
                   body("req-conv", "CONVERSATION_AGENT_TRANSFER", 12)) == "applied"  # fmt: skip
    assert (led.row(batch, 2)["state"], led.row(batch, 2)["updated_records"]) == ("succeeded", 12)
    assert led.verify().ok


def test_a_conversation_callback_sent_to_a_ticket_url_is_kept_and_not_applied(led):
    batch = new_batch(led)
    submit(led, batch, 3, "tickets", "req-3")

    verdict = deliver(
        led, batch, 3, "tickets-execute", body("req-3", "CONVERSATION_AGENT_TRANSFER")
    )

    assert verdict == "unexpected"
    assert led.row(batch, 3, "tickets")["state"] == "submitted"
    kept = led.callbacks(batch)[-1]
    assert (kept["phase"], kept["verdict"], kept["applied"]) == ("tickets-execute", "unexpected",
                                                                 False)  # fmt: skip


def test_a_ticket_execute_attempt_counts_on_the_ticket_transfer(led):
    batch = new_batch(led)
    attempt = {"endpoint": "/api/v3/agent/ticket/transfer", "number": 1, "started_at": "x",
               "elapsed_ms": 1.0, "http_status": 202, "request_id": "req-9"}  # fmt: skip

    led.record_attempt(batch, 2, "tickets-execute", attempt)

    assert led.row(batch, 2, "tickets")["attempts"] == 1
    assert led.row(batch, 2)["attempts"] == 0
    assert led.verify().ok


def test_a_ticket_transfer_has_its_own_callback_url_and_credential():
    config = callbacks.callback_config("http://127.0.0.1:8080", SECRET, "B1", 2, "tickets-execute")

    assert config["url"] == "http://127.0.0.1:8080/callbacks/B1/2/tickets-execute"
    assert config["headers"][callbacks.HEADER] != callbacks.token(SECRET, "B1", 2, "execute")
    target = callbacks.parse_path("/callbacks/B1/2/tickets-execute")
    assert (target.row, target.phase) == (2, "tickets-execute")
    assert callbacks.check(SECRET, target, config["headers"][callbacks.HEADER])
    assert not callbacks.check(SECRET, target, callbacks.token(SECRET, "B1", 2, "execute"))
    assert callbacks.parse_path("/callbacks/B1/2/tickets-reconcile") is None


def test_the_receiver_routes_a_ticket_callback_to_the_ticket_transfer(led):
    batch = new_batch(led)
    submit(led, batch, 2, "conversations", "req-conv")
    submit(led, batch, 2, "tickets", "req-tick")

    with start(make_app(led, SECRET), "127.0.0.1", 0) as server:
        with_conversations_token = send(
            server, batch, 2, body("req-tick"), phase="tickets-execute",
            token=callbacks.token(SECRET, batch, 2, "execute"),
        )  # fmt: skip
        answer = send(server, batch, 2, body("req-tick"), phase="tickets-execute")
        health = requests.get(f"{server.url}/healthz", timeout=TIMEOUT)

    assert with_conversations_token.status_code == 401
    assert (answer.status_code, answer.json()["verdict"]) == (200, "applied")
    assert health.status_code == 200
    assert led.row(batch, 2, "tickets")["state"] == "succeeded"
    assert led.row(batch, 2)["state"] == "submitted"


def test_a_version_3_ledger_keeps_its_rows_as_conversation_transfers(ledger_path):
    old_ledger(ledger_path, 3, request_id="req-1").close()

    with Ledger(ledger_path) as led:
        row = led.row(OLD_BATCH, 2)
        assert (row["kind"], row["state"], row["request_id"]) == ("conversations", "submitted",
                                                                  "req-1")  # fmt: skip
        verdict = deliver(led, OLD_BATCH, 2, "execute",
                          body("req-1", "CONVERSATION_AGENT_TRANSFER"))  # fmt: skip
        assert verdict == "applied"

    conn = sqlite3.connect(ledger_path)
    key = [c[1] for c in conn.execute('PRAGMA table_info("rows")') if c[5]]
    assert key == ["batch_id", "row", "kind"]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == ledger_module.SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "rows_by_state" in indexes
    conn.close()
