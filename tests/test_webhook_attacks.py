"""The receiver under attack (issue 12): a locked ledger loses nothing, refusals are counted
not stored, hostile bodies are answered cleanly, a SUCCESS only counts for its own request."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from helpers import SECRET, make_batch, result, send, wait_until

from omi_batch.ledger import Ledger
from omi_batch.spool import Spool, spool_path
from omi_batch.webhook import make_app, start


def states(ledger, batch):
    return {r["row"]: r["state"] for r in ledger.rows(batch)}


# --------------------------------------------------------------------------- 8: the spool


def test_callbacks_while_another_writer_holds_the_ledger_are_answered_200_and_applied_after(
    ledger, ledger_path
):
    batch = make_batch(ledger, rows=5)
    with start(make_app(ledger, SECRET, answer_within=0.3), "127.0.0.1", 0) as server:
        blocker = sqlite3.connect(ledger_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the ledger's write lock
        try:
            answers = [send(server, batch, row, result(f"req-{row}")) for row in range(2, 7)]
            assert [(a.status_code, a.json()) for a in answers] == [
                (200, {"verdict": "spooled"})
            ] * 5
            assert Spool(spool_path(ledger_path)).count() == 5
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert wait_until(lambda: set(states(ledger, batch).values()) == {"succeeded"})
        assert wait_until(lambda: Spool(spool_path(ledger_path)).count() == 0)
        retry = send(server, batch, 2, result("req-2"))
        assert (retry.status_code, retry.json()) == (200, {"verdict": "duplicate"})
    stored = [(c["row"], c["verdict"]) for c in ledger.callbacks(batch)]
    assert stored == [(2, "applied"), (3, "applied"), (4, "applied"), (5, "applied"),
                      (6, "applied"), (2, "duplicate")]  # fmt: skip


def test_a_receiver_restarted_drains_its_spool_first(ledger_path):
    batch = make_batch(Ledger(ledger_path), rows=2)
    impatient = Ledger(ledger_path, busy_timeout=0.2)
    blocker = sqlite3.connect(ledger_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with start(make_app(impatient, SECRET, answer_within=0.3), "127.0.0.1", 0) as server:
            for row in (2, 3):
                assert send(server, batch, row, result(f"req-{row}")).json() == {
                    "verdict": "spooled"
                }
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert Spool(spool_path(ledger_path)).count() == 2
    ledger = Ledger(ledger_path)
    assert states(ledger, batch) == {2: "submitted", 3: "submitted"}
    with start(make_app(ledger, SECRET), "127.0.0.1", 0):
        assert wait_until(lambda: states(ledger, batch) == {2: "succeeded", 3: "succeeded"})
    assert Spool(spool_path(ledger_path)).count() == 0


def test_a_spooled_callback_the_ledger_already_holds_is_not_applied_twice(ledger, ledger_path):
    batch = make_batch(ledger, rows=1)
    body = result("req-2")
    callback = {"batch_id": batch, "row": 2, "phase": "execute",
                "raw_body": json.dumps(body).encode(), "headers": {}, "remote": "127.0.0.1",
                "refused": None, "receipt": "r-1"}  # fmt: skip
    Spool(spool_path(ledger_path)).put(callback)
    # Applied once, then the receiver died before it removed the entry from its spool.
    assert ledger.receive_callback(**{**callback, "body": body}) == "applied"
    with start(make_app(ledger, SECRET), "127.0.0.1", 0):
        assert wait_until(lambda: Spool(spool_path(ledger_path)).count() == 0)
    assert [c["verdict"] for c in ledger.callbacks(batch)] == ["applied"]


def test_an_unwritable_ledger_keeps_the_callback_in_the_spool_and_answers_200(ledger, ledger_path):
    batch = make_batch(ledger, rows=1)
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    conn.execute("CREATE TRIGGER no_callbacks BEFORE INSERT ON callbacks "
                 "BEGIN SELECT RAISE(ABORT, 'read-only for this test'); END")  # fmt: skip
    with start(make_app(ledger, SECRET, answer_within=0.3), "127.0.0.1", 0) as server:
        answer = send(server, batch, 2, result())
        assert (answer.status_code, answer.json()) == (200, {"verdict": "spooled"})
        assert Spool(spool_path(ledger_path)).count() == 1
        conn.execute("DROP TRIGGER no_callbacks")
        assert wait_until(lambda: ledger.row(batch, 2)["state"] == "succeeded")
    conn.close()


# --------------------------------------------------------------------------- 6: WAL deleted


def test_the_receiver_answers_503_once_its_wal_file_was_deleted(ledger, ledger_path, receiver):
    batch = make_batch(ledger, rows=2)
    assert send(receiver, batch, 2, result("req-2")).status_code == 200
    os.unlink(f"{ledger_path}-wal")
    answer = send(receiver, batch, 3, result("req-3"))
    assert (answer.status_code, answer.json()) == (503, {"verdict": "error"})
    import requests

    health = requests.get(f"{receiver.url}/healthz", timeout=10)
    assert (health.status_code, health.json()) == (
        503,
        {"ok": False, "error": "ledger not writable"},
    )


# --------------------------------------------------------------------------- 7: refusals counted


def test_refused_requests_are_counted_and_only_a_few_are_kept(ledger, ledger_path):
    batch = make_batch(ledger, rows=1)
    with start(make_app(ledger, SECRET), "127.0.0.1", 0) as server:
        for _ in range(20):
            assert send(server, batch, 2, result(), token=None).status_code == 401
        for _ in range(5):
            assert send(server, batch, 2, result(), token="0" * 64).status_code == 401
    kept = [c["verdict"] for c in ledger.callbacks(batch)]
    assert kept == ["refused:missing_credential"] * 3 + ["refused:bad_credential"] * 3
    counted = {(r["reason"], r["count"]) for r in ledger.refusals()}
    assert sum(r["count"] for r in ledger.refusals()) == 25
    assert {reason for reason, _ in counted} == {"missing_credential", "bad_credential"}


def test_a_request_with_200_padded_headers_is_refused_431_and_not_stored_whole(
    ledger, ledger_path, receiver
):
    batch = make_batch(ledger, rows=1)
    size = os.path.getsize(ledger_path)
    padded = {f"X-Pad-{i}": "p" * 900 for i in range(200)}
    answer = send(receiver, batch, 2, result(), token=None, headers=padded)
    assert (answer.status_code, answer.json()) == (431, {"verdict": "refused:headers"})
    [kept] = ledger.callbacks(batch)
    assert len(json.dumps(kept["headers"])) < 8192
    assert ledger.row(batch, 2)["state"] == "submitted"
    assert os.path.getsize(ledger_path) - size < 64 * 1024


# --------------------------------------------------------------------------- 10: hostile bodies


def test_a_body_nested_30000_deep_is_400_too_deep(ledger, receiver):
    batch = make_batch(ledger, rows=1)
    raw = b'{"requestId": "req-2", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    answer = send(receiver, batch, 2, raw)
    assert (answer.status_code, answer.json()) == (400, {"verdict": "refused:too_deep"})
    assert ledger.row(batch, 2)["state"] == "submitted"


@pytest.mark.parametrize("count", ["1" + "0" * 400, "-1", "1.5", '"3"', "true"])
def test_an_updated_records_that_is_no_count_is_kept_flagged_and_not_applied(
    ledger, receiver, count
):
    batch = make_batch(ledger, rows=1)
    raw = ('{"requestId": "req-2", "status": "SUCCESS", "payload": {"updatedRecords": '
           + count + "}}")  # fmt: skip
    answer = send(receiver, batch, 2, raw)
    assert (answer.status_code, answer.json()) == (200, {"verdict": "unexpected"})
    row = ledger.row(batch, 2)
    assert (row["state"], row["needs_review"], row["updated_records"]) == ("submitted", True, None)
    assert row["error"].startswith("needs review: updatedRecords is not a count (")
    [kept] = ledger.callbacks(batch)
    assert kept["raw_body"] == raw
    assert ledger.verify().ok


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "req-2", "Status": "SUCCESS", "Payload": {"updated_records": 4}},
        {"RequestId": "req-2", "status": "SUCCESS", "payload": {"UpdatedRecords": 4}},
        {"requestID": "req-2", "STATUS": "success", "payload": {"updated-records": 4}},
    ],
)
def test_a_callback_spelling_its_fields_another_way_is_read(ledger, receiver, body):
    batch = make_batch(ledger, rows=1)
    answer = send(receiver, batch, 2, body)
    assert (answer.status_code, answer.json()) == (200, {"verdict": "applied"})
    row = ledger.row(batch, 2)
    assert (row["state"], row["updated_records"]) == ("succeeded", 4)
    [kept] = ledger.callbacks(batch)
    assert json.loads(kept["raw_body"]) == body  # stored as it came


def test_the_documented_spelling_wins_when_both_are_sent(ledger, receiver):
    batch = make_batch(ledger, rows=1)
    body = {"requestId": "req-2", "request_id": "req-9", "status": "SUCCESS",
            "payload": {"updatedRecords": 2, "updated_records": 8}}  # fmt: skip
    assert send(receiver, batch, 2, body).json() == {"verdict": "applied"}
    assert ledger.row(batch, 2)["updated_records"] == 2


def test_a_lone_surrogate_in_a_callback_is_stored_escaped(ledger, receiver):
    batch = make_batch(ledger, rows=1)
    raw = b'{"requestId": "req-2", "status": "ERROR", "payload": {"message": "bad \\ud800"}}'
    answer = send(receiver, batch, 2, raw)
    assert (answer.status_code, answer.json()) == (200, {"verdict": "applied"})
    assert ledger.row(batch, 2)["error"] == "bad \\ud800"
    assert ledger.verify().ok


# --------------------------------------------------------------------------- 9: whose request


def test_a_success_carrying_another_rows_request_id_is_unexpected_and_flags_the_row(
    ledger, receiver
):
    batch = make_batch(ledger, rows=2)
    answer = send(receiver, batch, 2, result("req-3"))
    assert (answer.status_code, answer.json()) == (200, {"verdict": "unexpected"})
    row = ledger.row(batch, 2)
    assert (row["state"], row["needs_review"]) == ("submitted", True)
    assert send(receiver, batch, 2, result("req-2")).json() == {"verdict": "applied"}


def test_a_success_for_an_unconfirmed_row_naming_another_request_is_not_late(ledger, receiver):
    batch = make_batch(ledger, rows=2, state="unconfirmed")
    assert send(receiver, batch, 2, result("req-3")).json() == {"verdict": "unexpected"}
    assert ledger.row(batch, 2)["state"] == "unconfirmed"


def test_a_success_arriving_before_its_202_is_stored_is_held_then_applied(ledger, ledger_path):
    batch = make_batch(ledger, rows=1, request_ids=False)
    with start(make_app(ledger, SECRET, hold_retry=0.1), "127.0.0.1", 0) as server:
        answer = send(server, batch, 2, result("req-2"))
        assert (answer.status_code, answer.json()) == (200, {"verdict": "held"})
        assert ledger.row(batch, 2)["state"] == "submitted"
        assert ledger.callbacks(batch) == []
        ledger.update_row(batch, 2, event="submit_accepted", request_id="req-2")  # the 202
        assert wait_until(lambda: ledger.row(batch, 2)["state"] == "succeeded")
    assert [c["verdict"] for c in ledger.callbacks(batch)] == ["applied"]
    assert Spool(spool_path(ledger_path)).count() == 0


def test_a_success_whose_202_was_stored_without_a_request_id_is_applied_not_held(ledger, receiver):
    """OMI's 202 carried no requestId (or one under a name we do not read): once that 202 is
    stored, the row's SUCCESS is applied at once, not held for the whole wait."""
    batch = make_batch(ledger, rows=1, request_ids=False)
    ledger.record_step(batch, 2, event="accepted")  # the 202, stored as execute stores it
    answer = send(receiver, batch, 2, result("req-unseen"))
    assert (answer.status_code, answer.json()) == (200, {"verdict": "applied"})
    assert ledger.row(batch, 2)["state"] == "succeeded"


def test_a_row_submitted_again_after_a_202_holds_a_success_until_its_new_202(ledger, ledger_path):
    batch = make_batch(ledger, rows=1, request_ids=False)
    ledger.record_step(batch, 2, event="accepted")  # the first submission's 202
    ledger.record_step(batch, 2, state="submitted", expect=["submitted"], event="resubmitted")
    with start(make_app(ledger, SECRET, hold_retry=0.1), "127.0.0.1", 0) as server:
        answer = send(server, batch, 2, result("req-2"))
        assert (answer.status_code, answer.json()) == (200, {"verdict": "held"})
        ledger.record_step(batch, 2, event="accepted")  # the new submission's 202
        assert wait_until(lambda: ledger.row(batch, 2)["state"] == "succeeded")
    assert Spool(spool_path(ledger_path)).count() == 0


# --------------------------------------------------------------------------- 11: idle connections


def test_a_callback_is_answered_while_1100_idle_connections_are_open(ledger, receiver):
    import socket

    batch = make_batch(ledger, rows=1)
    idle = []
    try:
        for _ in range(1100):
            conn = socket.create_connection((receiver.host, receiver.port), timeout=10)
            conn.sendall(b"POST /callbacks/")  # a request begun and never finished
            idle.append(conn)
        answer = send(receiver, batch, 2, result("req-2"))
        assert (answer.status_code, answer.json()) == (200, {"verdict": "applied"})
    finally:
        for conn in idle:
            conn.close()
