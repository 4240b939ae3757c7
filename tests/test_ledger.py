"""The audit ledger as the pipeline and the webhook receiver use it: batches and rows, the row
state machine, attempts, approvals, callbacks and their verdicts, the hash chain and its
verification, migrations, and that no secret reaches the file."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading

import pytest
from helpers import OLD_BATCH, old_ledger, transfer
from hypothesis import given, settings
from hypothesis import strategies as st

from omi_batch import ledger as ledger_module
from omi_batch.errors import IllegalTransition, LedgerError, NotFound, UsageError
from omi_batch.ledger import STATES, TRANSITIONS, Ledger, VerifyResult
from omi_batch.states import is_held

# Distinctive credential values: no byte of them may reach the ledger file.
TOKEN = "tok-3f9a1c7e5b2d4a6f8e0c"
API_KEY = "key-9d8c7b6a5f4e3d2c1b0a"
BEARER = "Bearer bearer-71c2e9a4d0f3"
COOKIE = "session=cookie-5e1b7d3a9c"
CUSTOM = "custom-secret-0a2b4c6d8e"
# Every credential a callback can carry, as headers (each must be dropped before storing).
CREDENTIALS = {"X-Omi-Batch-Token": TOKEN, "x-api-key": API_KEY, "Authorization": BEARER,
               "Cookie": COOKIE}  # fmt: skip

TRANSFERS = [
    transfer(2, "an.nguyen@example.vn", "binh.tran@example.vn", note="Nguyễn Văn An nghỉ việc"),
    transfer(3, "chi.le@example.vn", "binh.tran@example.vn", requested_target="an.nguyen@example.vn",
             via=("an.nguyen@example.vn",), conv_ids=("c1", "c2"), replace_existing_members=True),
    transfer(4, "dung.pham@example.vn", "chi.le@example.vn"),
]  # fmt: skip

# The legal path from planned to each state.
PATHS = {
    "planned": [],
    "previewed": ["previewed"],
    "preview_failed": ["preview_failed"],
    "approved": ["previewed", "approved"],
    "skipped": ["skipped"],
    "submitted": ["previewed", "approved", "submitted"],
    "succeeded": ["previewed", "approved", "submitted", "succeeded"],
    "failed": ["previewed", "approved", "submitted", "failed"],
    "unconfirmed": ["previewed", "approved", "submitted", "unconfirmed"],
    "cancelled": ["cancelled"],
}
ILLEGAL = [(a, b) for a in STATES for b in STATES if b not in TRANSITIONS[a]]


def new_batch(led: Ledger, transfers=TRANSFERS) -> str:
    return led.create_batch(
        source_file="departures.csv",
        source_sha256="ab" * 32,
        created_by="hr-admin",
        base_url="https://public-v1-stg.omicall.com",
        options={"limit": None, "concurrency": 4},
        input_rows=4,
        warnings=[{"row": 3, "code": "chain", "message": "an.nguyen is leaving too"}],
        rows=list(transfers),
    )


def walk(led: Ledger, batch_id: str, row: int, state: str) -> None:
    for step in PATHS[state]:
        led.record_step(batch_id, row, state=step, event=step)


def event_count(led: Ledger) -> int:
    return len(led.events())


def snapshot(led: Ledger, batch_id: str) -> tuple:
    return (led.rows(batch_id), led.events(), led.callbacks(), led.head())


# --------------------------------------------------------------------------- batches and rows


def test_a_new_batch_keeps_the_plan_in_order_with_every_row_planned(led):
    batch_id = new_batch(led)

    assert len(batch_id) == 20 and batch_id[8] == "-" and batch_id[15] == "-"
    batch = led.batch(batch_id)
    assert batch["row_count"] == 3
    assert batch["input_rows"] == 4
    assert batch["created_by"] == "hr-admin"
    assert batch["options"] == {"limit": None, "concurrency": 4}
    assert batch["warnings"] == [{"row": 3, "code": "chain", "message": "an.nguyen is leaving too"}]
    assert batch["states"] == {"planned": 3}
    rows = led.rows(batch_id)
    assert [(r["row"], r["seq"], r["state"]) for r in rows] == [
        (2, 0, "planned"),
        (3, 1, "planned"),
        (4, 2, "planned"),
    ]
    assert rows[1]["via"] == ["an.nguyen@example.vn"]
    assert rows[1]["conv_ids"] == ["c1", "c2"]
    assert rows[1]["replace_existing_members"] is True
    assert rows[0]["note"] == "Nguyễn Văn An nghỉ việc"
    assert rows[0]["needs_review"] is False
    assert rows[0]["attempts"] == 0
    assert [e["kind"] for e in led.events()] == ["batch_created"]


def test_batches_are_listed_newest_first_with_their_state_counts(led):
    first = new_batch(led)
    second = new_batch(led, TRANSFERS[:1])
    led.record_step(second, 2, state="skipped", event="skipped")

    listed = led.batches()

    assert [b["id"] for b in listed] == [second, first]  # newest first, even within a second
    states = {b["id"]: b["states"] for b in listed}
    assert states == {first: {"planned": 3}, second: {"skipped": 1}}


def test_rows_can_be_filtered_by_state(led):
    batch_id = new_batch(led)
    walk(led, batch_id, 3, "approved")

    assert [r["row"] for r in led.rows(batch_id, states=["approved"])] == [3]
    assert [r["row"] for r in led.rows(batch_id, states=("planned", "approved"))] == [2, 3, 4]
    assert led.rows(batch_id, states=[]) == []


def test_an_unknown_batch_or_row_is_not_found(led):
    batch_id = new_batch(led)

    with pytest.raises(NotFound) as error:
        led.batch("20200101-000000-dead")
    assert str(error.value) == f"no batch 20200101-000000-dead in {led.path}"
    with pytest.raises(NotFound, match=f"^no row 99 in batch {batch_id}$"):
        led.row(batch_id, 99)
    with pytest.raises(NotFound):
        led.rows("nope")
    with pytest.raises(NotFound, match="^no row 99 in batch"):
        led.record_step(batch_id, 99, state="previewed", event="previewed")


def test_a_plan_with_a_row_twice_creates_no_batch(led):
    with pytest.raises(UsageError, match="^row 2 appears twice in the plan$"):
        new_batch(led, [TRANSFERS[0], TRANSFERS[0]])
    assert led.batches() == []
    assert led.head() is None


def test_the_ledger_file_and_its_folder_are_created_in_wal_mode(tmp_path):
    path = tmp_path / "deep" / "er" / "ledger.db"
    with Ledger(path) as led:
        assert led.path == path
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == ledger_module.SCHEMA_VERSION
        conn.close()


def test_opening_without_create_refuses_a_missing_file(tmp_path):
    with pytest.raises(NotFound, match="^no ledger at .*missing.db$"):
        Ledger(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_a_file_that_is_not_sqlite_is_refused_cleanly(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are not the droids " * 100)
    with pytest.raises(LedgerError, match="is not a usable ledger"):
        Ledger(path)


# --------------------------------------------------------------------------- state machine


def test_a_row_walks_the_whole_happy_path(led):
    batch_id = new_batch(led)
    led.record_step(batch_id, 2, state="previewed", event="previewed", conversations_previewed=12)
    led.approve(batch_id, approve=[2], by="hr-admin", how="all")
    led.record_step(batch_id, 2, state="submitted", event="submitted", expect=["approved"])
    led.record_step(
        batch_id,
        2,
        state="succeeded",
        event="confirmed",
        updated_records=12,
        verified_by="callback",
    )
    done = led.row(batch_id, 2)

    assert done["state"] == "succeeded"
    assert done["conversations_previewed"] == 12
    assert done["updated_records"] == 12
    kinds = [(e["kind"], e["data"].get("from"), e["data"].get("to")) for e in led.events()]
    assert kinds == [
        ("batch_created", None, None),
        ("previewed", "planned", "previewed"),
        ("approved", "previewed", "approved"),
        ("submitted", "approved", "submitted"),
        ("confirmed", "submitted", "succeeded"),
    ]
    assert led.events()[-1]["data"] == {
        "from": "submitted",
        "to": "succeeded",
        "updated_records": 12,
        "verified_by": "callback",
    }


@pytest.mark.parametrize(("start", "target"), ILLEGAL)
def test_every_illegal_transition_is_refused_and_writes_nothing(led, start, target):
    batch_id = new_batch(led)
    walk(led, batch_id, 2, start)
    before = snapshot(led, batch_id)

    with pytest.raises(IllegalTransition) as error:
        led.record_step(batch_id, 2, state=target, event="move", error="should not be written")

    assert str(error.value) == f"row 2 of batch {batch_id} cannot go from {start} to {target}"
    assert snapshot(led, batch_id) == before


def test_the_state_machine_has_exactly_the_documented_transitions():
    legal = sum(len(targets) for targets in TRANSITIONS.values())
    assert legal == 31  # incl. submitted → approved: OMI refused the key, nothing started
    # cancel: from every state before a transfer was sent, and to nothing after
    assert {s for s, targets in TRANSITIONS.items() if "cancelled" in targets} == {
        "planned", "previewed", "preview_failed", "approved", "skipped"}  # fmt: skip
    assert TRANSITIONS["cancelled"] == set()
    assert len(ILLEGAL) == 100 - 31
    assert set(TRANSITIONS) == set(STATES)


def test_expect_refuses_a_row_in_another_state_and_writes_nothing(led):
    batch_id = new_batch(led)
    walk(led, batch_id, 2, "submitted")
    led.record_step(batch_id, 2, state="unconfirmed", event="wait_over")
    before = snapshot(led, batch_id)

    with pytest.raises(IllegalTransition) as error:
        led.record_step(batch_id, 2, state="succeeded", event="x", expect=["submitted"])

    assert str(error.value) == f"row 2 of batch {batch_id} is unconfirmed, not submitted"
    assert snapshot(led, batch_id) == before


@pytest.mark.parametrize(
    ("state", "fields", "message"),
    [
        ("done", {}, "^'done' is not a row state$"),
        ("previewed", {"seq": 9}, "^not a row field the ledger lets callers set: seq$"),
        ("previewed", {"updated_at": "x"}, "not a row field .*: updated_at"),
        ("previewed", {"drop table rows": 1}, "not a row field .*: drop table rows"),
    ],
)
def test_unknown_states_and_fields_are_refused(led, state, fields, message):
    batch_id = new_batch(led)
    before = snapshot(led, batch_id)
    with pytest.raises(LedgerError, match=message):
        led.record_step(batch_id, 2, state=state, event="x", **fields)
    assert snapshot(led, batch_id) == before


def test_update_row_writes_fields_without_changing_the_state(led):
    batch_id = new_batch(led)
    walk(led, batch_id, 2, "submitted")

    row = led.update_row(batch_id, 2, event="request_id_saved", request_id="req-1")

    assert row["state"] == "submitted"
    assert row["request_id"] == "req-1"
    assert led.events()[-1]["kind"] == "request_id_saved"
    assert led.events()[-1]["data"] == {"request_id": "req-1", "state": "submitted"}
    with pytest.raises(LedgerError):
        led.update_row(batch_id, 2, event="x", state="succeeded")


def test_threads_sharing_one_ledger_keep_every_state_change(led):
    batch_id = new_batch(led, [dict(TRANSFERS[0], row=row) for row in range(2, 42)])  # 40 rows
    errors: list[BaseException] = []

    def work(rows: range) -> None:
        try:
            for row in rows:
                for step in PATHS["succeeded"]:
                    led.record_step(batch_id, row, state=step, event=step)
                led.log("worker_done", batch_id=batch_id, row=row)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(range(2 + i * 5, 7 + i * 5),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert led.batch(batch_id)["states"] == {"succeeded": 40}
    result = led.verify()
    assert result.ok, result.problem
    assert result.events == 1 + 40 * 5


# --------------------------------------------------------------------------- attempts, approvals


def attempt(number=1, **overrides):
    base = {
        "endpoint": "/api/v3/agent/conversation/transfer",
        "number": number,
        "started_at": "2026-11-25T09:30:00.000Z",
        "elapsed_ms": 41.5,
        "http_status": 202,
        "vendor_code": None,
        "error": None,
        "request_id": "req-1",
        "wait_s": None,
        "context": {"batch": "b", "row": 2, "phase": "execute"},
    }
    base.update(overrides)
    return base


def test_attempts_are_kept_and_execute_attempts_counted_on_the_row(led):
    batch_id = new_batch(led)
    walk(led, batch_id, 2, "submitted")

    led.record_attempt(batch_id, 2, "preview", attempt(request_id=None))
    led.record_attempt(
        batch_id,
        2,
        "execute",
        attempt(
            1, http_status=429, error="rate_limited", wait_s=0.5, message="rate_limit_exceeded"
        ),
    )
    led.record_attempt(batch_id, 2, "execute", attempt(2))

    assert led.row(batch_id, 2)["attempts"] == 2
    stored = [item for item in led.export(batch_id) if item["type"] == "attempt"]
    assert [
        (a["phase"], a["number"], a["http_status"], a["error"], a["wait_s"]) for a in stored
    ] == [
        ("preview", 1, 202, None, None),
        ("execute", 1, 429, "rate_limited", 0.5),
        ("execute", 2, 202, None, None),
    ]
    assert "context" not in stored[0]
    assert [a["message"] for a in stored] == [None, "rate_limit_exceeded", None]
    last = led.events()[-1]
    assert last["kind"] == "attempt"
    assert last["data"]["phase"] == "execute"
    assert last["data"]["request_id"] == "req-1"


def test_an_attempt_can_be_the_clients_dataclass(led):
    from omi_batch.client import Attempt

    batch_id = new_batch(led)
    led.record_attempt(
        batch_id, 3, "execute", Attempt("/t", 1, "t0", 1.0, None, None, "transport", None, 2.0)
    )
    assert led.row(batch_id, 3)["attempts"] == 1


def test_approve_and_skip_in_one_call(led):
    batch_id = new_batch(led)
    for row in (2, 3, 4):
        led.record_step(batch_id, row, state="previewed", event="previewed")

    approved = led.approve(batch_id, approve=[2, 4], skip=[3], by="lan.hr", how="report")

    assert approved == 2
    rows = {r["row"]: r for r in led.rows(batch_id)}
    assert {row: r["state"] for row, r in rows.items()} == {
        2: "approved",
        3: "skipped",
        4: "approved",
    }
    assert rows[2]["approved_by"] == "lan.hr"
    assert rows[2]["approved_how"] == "report"
    assert rows[3]["approved_by"] is None
    approvals = [item for item in led.export(batch_id) if item["type"] == "approval"]
    assert [(a["row"], a["decision"], a["by"], a["how"]) for a in approvals] == [
        (2, "approved", "lan.hr", "report"),
        (4, "approved", "lan.hr", "report"),
        (3, "skipped", "lan.hr", "report"),
    ]


def test_approving_twice_changes_nothing_the_second_time(led):
    batch_id = new_batch(led)
    led.record_step(batch_id, 2, state="previewed", event="previewed")
    assert led.approve(batch_id, approve=[2], by="a", how="all") == 1
    before = snapshot(led, batch_id)

    assert led.approve(batch_id, approve=[2], by="a", how="all") == 0
    assert snapshot(led, batch_id) == before


@pytest.mark.parametrize(
    ("approve", "skip", "error", "message"),
    [
        ([2, 3], [], IllegalTransition, "row 3 of batch .* is planned: it cannot be approved"),
        ([2], [4], IllegalTransition, "row 4 of batch .* is succeeded: it cannot be skipped"),
        ([2, 99], [], NotFound, "no row 99 in batch"),
        ([2], [2], UsageError, "rows both approved and skipped: 2"),
    ],
)
def test_a_bad_approval_refuses_the_whole_call(led, approve, skip, error, message):
    batch_id = new_batch(led)
    led.record_step(batch_id, 2, state="previewed", event="previewed")
    walk(led, batch_id, 4, "succeeded")
    before = snapshot(led, batch_id)

    with pytest.raises(error, match=message):
        led.approve(batch_id, approve=approve, skip=skip, by="a", how="all")

    assert snapshot(led, batch_id) == before


def test_approving_an_unknown_batch_is_not_found(led):
    with pytest.raises(NotFound, match="^no batch nope in "):
        led.approve("nope", approve=[2], by="a", how="all")


# --------------------------------------------------------------------------- callbacks


def body(status="SUCCESS", records=5, request_id="req-1", **payload):
    if records is not None:
        payload["updatedRecords"] = records
    return {
        "requestId": request_id,
        "requestTimeMs": 1764063000000,
        "action": "CONVERSATION_AGENT_TRANSFER",
        "status": status,
        "responseTimeMs": 1764063001000,
        "payload": payload,
    }


def deliver(led, batch_id, row=2, phase="execute", data=None, refused=None, headers=None):
    raw = json.dumps(data).encode() if data is not None else b"{not json"
    return led.receive_callback(
        batch_id=batch_id,
        row=row,
        phase=phase,
        raw_body=raw,
        headers=headers or {"Content-Type": "application/json"},
        remote="127.0.0.1",
        body=data,
        refused=refused,
    )


def submitted_row(led, batch_id, row=2):
    walk(led, batch_id, row, "submitted")


def unconfirmed_row(led, batch_id, row=2):
    walk(led, batch_id, row, "unconfirmed")


def preview_verified_row(led, batch_id, row=2):
    walk(led, batch_id, row, "unconfirmed")
    led.record_step(batch_id, row, state="succeeded", event="verified", verified_by="preview")


def applied_success(led, batch_id, row=2):
    submitted_row(led, batch_id, row)
    assert deliver(led, batch_id, row, data=body("SUCCESS", 5)) == "applied"


def previewed_row(led, batch_id, row=2):
    walk(led, batch_id, row, "previewed")


def approved_row(led, batch_id, row=2):
    walk(led, batch_id, row, "approved")


def planned_row(led, batch_id, row=2):
    pass


# (setup, phase, body, refused, row) -> (verdict, state, fields expected on the row)
VERDICTS = {
    "refused credential": (
        submitted_row, "execute", body(), "bad_credential", 2,
        "refused:bad_credential", "submitted", {"callback_status": None},
    ),
    "refused bad json": (
        submitted_row, "execute", None, "bad_json", 2,
        "refused:bad_json", "submitted", {"callback_status": None},
    ),
    "no body and no reason": (
        submitted_row, "execute", None, None, 2,
        "refused:bad_json", "submitted", {"callback_status": None},
    ),
    "unknown row": (
        submitted_row, "execute", body(), None, 77,
        "unknown", "submitted", {"callback_status": None},
    ),
    "preview stored": (
        previewed_row, "preview", body(records=9), None, 2,
        "stored", "previewed", {"conversations_previewed": None},
    ),
    "execute success": (
        submitted_row, "execute", body("SUCCESS", 5), None, 2,
        "applied", "succeeded",
        {"updated_records": 5, "callback_status": "SUCCESS", "verified_by": "callback",
         "request_id": "req-1", "error": None},
    ),
    "execute error with message": (
        submitted_row, "execute", body("ERROR", None, message="user_not_found"), None, 2,
        "applied", "failed",
        {"callback_status": "ERROR", "error": "user_not_found", "verified_by": "callback"},
    ),
    "execute error without message": (
        submitted_row, "execute", body("ERROR", None), None, 2,
        "applied", "failed", {"callback_status": "ERROR", "error": "OMI reported ERROR"},
    ),
    "late success": (
        unconfirmed_row, "execute", body("SUCCESS", 3), None, 2,
        "late", "succeeded", {"updated_records": 3, "callback_status": "SUCCESS"},
    ),
    "duplicate": (
        applied_success, "execute", body("SUCCESS", 5), None, 2,
        "duplicate", "succeeded", {"updated_records": 5, "needs_review": False},
    ),
    "same result, a request this row was not given": (
        applied_success, "execute", body("SUCCESS", 5, request_id="req-2"), None, 2,
        "unexpected", "succeeded", {"updated_records": 5, "needs_review": True},
    ),
    "conflict on count": (
        applied_success, "execute", body("SUCCESS", 7), None, 2,
        "conflict", "succeeded",
        {"updated_records": 5, "callback_status": "SUCCESS", "needs_review": True},
    ),
    "conflict on status": (
        applied_success, "execute", body("ERROR", None, request_id="req-1"), None, 2,
        "conflict", "succeeded", {"callback_status": "SUCCESS", "needs_review": True},
    ),
    "confirms a preview verification": (
        preview_verified_row, "execute", body("SUCCESS", 4), None, 2,
        "confirmed", "succeeded",
        {"updated_records": 4, "callback_status": "SUCCESS", "verified_by": "preview",
         "needs_review": False},
    ),
    "contradicts a preview verification": (
        preview_verified_row, "execute", body("ERROR", None), None, 2,
        "conflict", "succeeded", {"callback_status": None, "needs_review": True},
    ),
    "never submitted (approved)": (
        approved_row, "execute", body(), None, 2,
        "unexpected", "approved", {"callback_status": None, "updated_records": None},
    ),
    "never submitted (planned)": (
        planned_row, "execute", body(), None, 2,
        "unexpected", "planned", {"callback_status": None},
    ),
    "status neither success nor error": (
        submitted_row, "execute", body("PENDING"), None, 2,
        "unexpected", "submitted", {"callback_status": None},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(VERDICTS))
def test_callback_verdicts(led, case):
    setup, phase, data, refused, row, verdict, state, fields = VERDICTS[case]
    batch_id = new_batch(led)
    setup(led, batch_id)
    callbacks_before = len(led.callbacks())
    events_before = event_count(led)

    assert deliver(led, batch_id, row, phase, data, refused) == verdict

    stored = led.callbacks(batch_id)
    assert len(stored) == callbacks_before + 1
    assert stored[-1]["verdict"] == verdict
    assert stored[-1]["row"] == row
    assert stored[-1]["phase"] == phase
    assert stored[-1]["applied"] is (verdict in ("applied", "late", "confirmed"))
    kind = "callback_refused" if verdict.startswith("refused:") else f"callback_{verdict}"
    assert [e["kind"] for e in led.events()[events_before:]] == [kind]
    got = led.row(batch_id, 2)
    assert got["state"] == state
    assert {name: got[name] for name in fields} == fields
    assert led.verify().ok


def test_a_callback_for_an_unknown_batch_is_kept_as_unknown(led):
    verdict = deliver(led, "19990101-000000-beef", 2, data=body())
    assert verdict == "unknown"
    assert [(c["batch_id"], c["verdict"]) for c in led.callbacks()] == [
        ("19990101-000000-beef", "unknown")
    ]
    assert led.events()[-1]["kind"] == "callback_unknown"


def test_a_refused_callback_keeps_its_raw_body_and_changes_no_row(led):
    batch_id = new_batch(led)
    submitted_row(led, batch_id)
    raw = b'{"requestId": "x", "status": "SUCC\xff'
    verdict = led.receive_callback(
        batch_id=batch_id,
        row=2,
        phase="execute",
        raw_body=raw,
        headers={},
        remote="10.0.0.9",
        body=None,
        refused="bad_json",
    )
    assert verdict == "refused:bad_json"
    stored = led.callbacks(batch_id)[0]
    assert stored["raw_body"] == '{"requestId": "x", "status": "SUCC\ufffd'
    assert stored["remote"] == "10.0.0.9"
    assert led.row(batch_id, 2)["state"] == "submitted"


def test_find_callback_returns_the_first_accepted_one(led):
    batch_id = new_batch(led)
    previewed_row(led, batch_id)
    deliver(led, batch_id, 2, "preview", body(records=8), refused="bad_credential")
    assert led.find_callback(batch_id, 2, "preview") is None

    deliver(led, batch_id, 2, "preview", body(records=8, request_id="p-1"))
    deliver(led, batch_id, 2, "preview", body(records=6, request_id="p-2"))

    first = led.find_callback(batch_id, 2, "preview")
    assert (first["request_id"], first["updated_records"], first["status"]) == ("p-1", 8, "SUCCESS")
    assert led.find_callback(batch_id, 2, "preview", request_id="p-2")["updated_records"] == 6
    assert led.find_callback(batch_id, 2, "preview", request_id="p-3") is None
    assert led.find_callback(batch_id, 2, "execute") is None


def test_callback_headers_lose_every_credential(led):
    batch_id = new_batch(led)
    submitted_row(led, batch_id)
    headers = {
        **CREDENTIALS,
        "X-Custom-Secret": CUSTOM,
        "HTTP_X_OMI_BATCH_TOKEN": TOKEN,
        "Content-Type": "application/json",
        "User-Agent": "OMI-Callback/1.0",
    }
    deliver(led, batch_id, data=body(), headers=headers)

    assert led.callbacks(batch_id)[0]["headers"] == {
        "Content-Type": "application/json",
        "User-Agent": "OMI-Callback/1.0",
    }


def test_no_credential_passed_in_headers_reaches_the_ledger_file(ledger_path):
    led = Ledger(ledger_path)
    batch_id = new_batch(led)
    submitted_row(led, batch_id)
    headers = {**CREDENTIALS, "X-Webhook-Secret": CUSTOM}
    for refused in ("bad_credential", None):
        deliver(led, batch_id, data=body(), refused=refused, headers=headers)
    deliver(led, batch_id, 99, data=body(), headers=headers)

    def file_bytes() -> bytes:
        parts = [ledger_path, ledger_path.with_name(ledger_path.name + "-wal")]
        return b"".join(p.read_bytes() for p in parts if p.exists())

    secrets = [TOKEN, API_KEY, BEARER, COOKIE, CUSTOM, "bearer-71c2e9a4d0f3"]
    while_open = file_bytes()
    led.close()
    after_close = file_bytes()
    assert b"OMI-Callback" not in while_open  # sanity: no such header was sent
    assert b"req-1" in after_close  # sanity: the callbacks are in there
    for value in secrets:
        assert value.encode() not in while_open
        assert value.encode() not in after_close


# --------------------------------------------------------------------------- hash chain


def test_each_event_hash_is_the_documented_formula(led):
    led.log("first", note="Trần Thị Bình", n=1)
    batch_id = new_batch(led)
    led.log("second", batch_id=batch_id, row=2, nested={"b": [1, 2], "a": None})

    prev = "0" * 64
    for event in led.events():
        canonical = json.dumps(
            {
                "id": event["id"],
                "at": event["at"],
                "kind": event["kind"],
                "batch_id": event["batch_id"],
                "row": event["row"],
                "data": event["data"],
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        assert event["prev_hash"] == prev
        assert event["hash"] == hashlib.sha256((prev + canonical).encode()).hexdigest()
        prev = event["hash"]
    assert led.head() == prev
    assert [e["id"] for e in led.events()] == [1, 2, 3]


def test_the_head_file_names_the_last_event(led):
    assert led.read_head_file() is None
    led.log("one")
    event_id = led.log("two")
    assert event_id == 2
    assert json.loads(led.head_path.read_text()) == {"id": 2, "hash": led.head()}


def test_a_lower_head_never_overwrites_a_higher_one(led):
    led.log("one")
    led.head_path.write_text(json.dumps({"id": 50, "hash": "f" * 64}))
    led.log("two")
    assert json.loads(led.head_path.read_text()) == {"id": 50, "hash": "f" * 64}


def test_an_intact_ledger_verifies(led):
    batch_id = new_batch(led)
    walk(led, batch_id, 2, "succeeded")
    result = led.verify()
    assert result == VerifyResult(ok=True, events=5, head=led.head(), first_bad=None, problem="")


def test_an_empty_ledger_verifies(led):
    assert led.verify() == VerifyResult(ok=True, events=0, head=None)


def test_a_missing_head_file_is_a_warning_not_a_failure(led):
    led.log("one")
    led.head_path.unlink()
    result = led.verify()
    assert result.ok
    assert result.events == 1
    assert (
        result.problem
        == "no head file ledger.db.head: a cut at the end of the chain cannot be detected"
    )


def _forge(conn, event_id, prev_hash, kind="forged", data=None):
    text = ledger_module.canonical_json(data or {"by": "mallory"})
    at = "2026-11-25T09:00:00.000Z"
    digest = ledger_module.event_hash(
        prev_hash, ledger_module.event_text(event_id, at, kind, None, None, text)
    )
    conn.execute(
        "INSERT INTO events (id, at, kind, batch_id, row, data, prev_hash, hash) "
        "VALUES (?, ?, ?, NULL, NULL, ?, ?, ?)",
        (event_id, at, kind, text, prev_hash, digest),
    )


def _hash_of(conn, event_id):
    return conn.execute("SELECT hash FROM events WHERE id = ?", (event_id,)).fetchone()[0]


def tamper_edit_data(conn, head):
    conn.execute("""UPDATE events SET data = '{"i":999}' WHERE id = 7""")


def tamper_edit_kind(conn, head):
    conn.execute("UPDATE events SET kind = 'nothing_to_see' WHERE id = 7")


def tamper_edit_hash(conn, head):
    conn.execute("UPDATE events SET hash = ? WHERE id = 7", ("e" * 64,))


def tamper_delete_middle(conn, head):
    conn.execute("DELETE FROM events WHERE id = 7")


def tamper_delete_several(conn, head):
    conn.execute("DELETE FROM events WHERE id BETWEEN 7 AND 9")


def tamper_delete_first(conn, head):
    conn.execute("DELETE FROM events WHERE id = 1")


def tamper_delete_tail(conn, head):
    conn.execute("DELETE FROM events WHERE id >= 15")


def tamper_insert(conn, head):
    # Make room at 7, then insert a well-formed event chained to event 6.
    conn.execute("UPDATE events SET id = id + 1000 WHERE id >= 7")
    conn.execute("UPDATE events SET id = id - 999 WHERE id >= 1000")
    _forge(conn, 7, _hash_of(conn, 6))


def tamper_append(conn, head):
    _forge(conn, 21, "0" * 64)


def tamper_insert_before_the_start(conn, head):
    _forge(conn, 0, "0" * 64)


def tamper_swap(conn, head):
    cols = "at, kind, batch_id, row, data, prev_hash, hash"
    seven = conn.execute(f"SELECT {cols} FROM events WHERE id = 7").fetchone()
    eight = conn.execute(f"SELECT {cols} FROM events WHERE id = 8").fetchone()
    sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
    conn.execute(f"UPDATE events SET {sets} WHERE id = 7", eight)
    conn.execute(f"UPDATE events SET {sets} WHERE id = 8", seven)


def tamper_rewrite_chain(conn, head):
    # Edit event 7 and recompute every hash after it: only the head file can tell.
    rows = conn.execute(
        "SELECT id, at, kind, batch_id, row, data FROM events ORDER BY id"
    ).fetchall()
    prev = "0" * 64
    for event_id, at, kind, batch_id, row, data in rows:
        if event_id == 7:
            data = '{"i":999}'
        digest = ledger_module.event_hash(
            prev, ledger_module.event_text(event_id, at, kind, batch_id, row, data)
        )
        conn.execute(
            "UPDATE events SET data = ?, prev_hash = ?, hash = ? WHERE id = ?",
            (data, prev, digest, event_id),
        )
        prev = digest


TAMPERING = {
    "edit a data field": (tamper_edit_data, 7, "event 7 was edited (its hash does not match its content)"),
    "edit a kind": (tamper_edit_kind, 7, "event 7 was edited (its hash does not match its content)"),
    "edit a hash": (tamper_edit_hash, 7, "event 7 was edited (its hash does not match its content)"),
    "delete a middle event": (tamper_delete_middle, 7, "event 7 was deleted (the chain jumps from 6 to 8)"),
    "delete several": (tamper_delete_several, 7, "events 7 to 9 were deleted (the chain jumps from 6 to 10)"),
    "delete the first": (tamper_delete_first, 1, "event 1 was deleted (the chain jumps from 0 to 2)"),
    "delete the tail": (tamper_delete_tail, 15, "the chain was cut after event 14 (the head file names event 20)"),
    "insert": (tamper_insert, 7, "event 7 was inserted (event 8 follows the one before it)"),
    "insert before the start": (tamper_insert_before_the_start, 0, "event 0 was inserted (ids start at 1)"),
    "append a forged event": (tamper_append, 21, "event 21 does not follow event 20: an event before it was edited, deleted or inserted"),
    "swap two": (tamper_swap, 7, "event 7 is out of order (it follows event 8)"),
    "rewrite the chain": (tamper_rewrite_chain, 20, "event 20 does not match the head file: the chain was rewritten"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TAMPERING))
def test_every_kind_of_tampering_is_caught(ledger_path, case):
    tamper, first_bad, problem = TAMPERING[case]
    with Ledger(ledger_path) as led:
        for i in range(20):
            led.log("tick", i=i, who="Lê Thị Chi")
        head = led.head()
        assert led.verify().ok
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    tamper(conn, head)
    conn.close()

    with Ledger(ledger_path, check_head=False) as led:  # as `ledger verify` opens it
        result = led.verify()

    assert (result.ok, result.first_bad, result.problem) == (False, first_bad, problem)


def test_an_unreadable_head_file_fails_verification(led):
    led.log("one")
    led.head_path.write_text("{garbage")
    result = led.verify()
    assert (result.ok, result.problem) == (False, "the head file ledger.db.head is unreadable")


def test_writes_continue_the_chain_after_reopening(ledger_path):
    with Ledger(ledger_path) as led:
        led.log("one")
    with Ledger(ledger_path) as led:
        assert led.log("two") == 2
        assert led.verify().ok


# --------------------------------------------------------------------------- export


def test_export_gives_the_whole_trail_of_one_batch(led):
    batch_id = new_batch(led)
    other = new_batch(led, TRANSFERS[:1])
    walk(led, batch_id, 2, "previewed")
    led.approve(batch_id, approve=[2], by="lan.hr", how="all")
    led.record_step(batch_id, 2, state="submitted", event="submitted")
    led.record_attempt(batch_id, 2, "execute", attempt())
    deliver(led, batch_id, data=body())
    led.log("note", batch_id=other, text="not this batch")

    items = list(led.export(batch_id))

    assert [i["type"] for i in items] == (
        ["batch", "row", "row", "row", "approval", "attempt", "callback"] + ["event"] * 6
    )
    assert items[0]["id"] == batch_id
    assert all(i["batch_id"] == batch_id for i in items[1:])
    assert items[-1]["kind"] == "callback_applied"
    assert items[-1]["data"]["verdict"] == "applied"
    json.dumps(items, ensure_ascii=False)  # JSON-able as it is


def test_export_of_an_unknown_batch_is_not_found_at_once(led):
    with pytest.raises(NotFound, match="^no batch nope in "):
        led.export("nope")


# --------------------------------------------------------------------------- migrations


def test_a_version_1_ledger_opens_and_is_migrated(ledger_path):
    conn = old_ledger(ledger_path, 1, database=True)
    columns = [c[1] for c in conn.execute('PRAGMA table_info("rows")')]
    assert "needs_review" not in columns
    conn.close()

    with Ledger(ledger_path) as led:
        row = led.row(OLD_BATCH, 2)
        assert row["needs_review"] is False
        assert row["held_by"] is None
        assert row["state"] == "submitted"
        verdict = deliver(led, OLD_BATCH, data=body())
        assert verdict == "applied"

    conn = sqlite3.connect(ledger_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == ledger_module.SCHEMA_VERSION == 6
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"rows_by_state", "callbacks_by_row", "events_by_batch"} <= indexes
    conn.close()


# A row held the way omi-batch held rows before schema 5: its error text only, no held_by.
OLD_HOLD = "held: row 2 of the same source is failed"


def test_a_row_held_by_an_omi_batch_before_schema_5_reads_held_after_the_upgrade(ledger_path):
    import sqlite_utils

    conn = sqlite3.connect(ledger_path, isolation_level=None)
    assert ledger_module.migrate(sqlite_utils.Database(conn, execute_plugins=False), 4) == 4
    conn.execute(
        "INSERT INTO batches (id, created_at, row_count, options, warnings) "
        "VALUES ('20260101-000000-0001', '2026-01-01T00:00:00.000Z', 2, '{}', '[]')"
    )
    for row, state, error in ((2, "failed", "ERROR 500"), (3, "approved", OLD_HOLD)):
        conn.execute(
            'INSERT INTO "rows" (batch_id, "row", kind, seq, source_email, target_email, via, '
            "conv_ids, state, error) VALUES ('20260101-000000-0001', ?, 'conversations', ?, "
            "'an.nguyen@example.vn', 'binh.tran@example.vn', '[]', '[]', ?, ?)",
            (row, row - 2, state, error),
        )
    conn.close()

    with Ledger(ledger_path) as led:
        held = led.row("20260101-000000-0001", 3)
        assert (held["state"], held["held_by"], held["error"]) == ("approved", 2, OLD_HOLD)
        assert is_held(held)
        assert not is_held(led.row("20260101-000000-0001", 2))
        [event] = led.events()
        assert (event["kind"], event["row"], event["data"]["held_by"]) == ("held_by_filled", 3, 2)

    conn = sqlite3.connect(ledger_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == ledger_module.SCHEMA_VERSION == 6
    conn.close()


def _held_the_old_way(ledger_path, *, decided_again: bool = False) -> str:
    """A ledger whose row 3 was held behind row 2 as omi-batch did before schema 5 (an error
    text, no held_by in the row or its event), then labelled schema 5: the version a ledger
    has when schema 5 was applied to it before its old holds were filled."""
    with Ledger(ledger_path) as led:
        batch_id = new_batch(led)
        walk(led, batch_id, 2, "failed")
        walk(led, batch_id, 3, "approved")
        led.record_step(batch_id, 3, event="held", error=OLD_HOLD)
        if decided_again:  # a newer omi-batch skipped and approved it again: held_by None
            led.approve(batch_id, approve=[], skip=[3], by="lan.hr", how="rows")
            led.approve(batch_id, approve=[3], by="lan.hr", how="rows")
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    conn.execute("PRAGMA user_version = 5")
    conn.close()
    return batch_id


def test_a_ledger_already_at_schema_5_gets_its_old_holds_filled_and_still_verifies(ledger_path):
    batch_id = _held_the_old_way(ledger_path)

    with Ledger(ledger_path) as led:
        held = led.row(batch_id, 3)
        assert (held["held_by"], is_held(held)) == (2, True)
        assert led.events()[-1]["kind"] == "held_by_filled"
        result = led.verify()
        assert (result.ok, result.rows, result.problem) == (True, (), "")


def test_a_row_decided_again_after_its_old_hold_is_not_held_by_the_upgrade(ledger_path):
    batch_id = _held_the_old_way(ledger_path, decided_again=True)

    with Ledger(ledger_path) as led:
        row = led.row(batch_id, 3)
        assert (row["state"], row["held_by"], row["error"]) == ("approved", None, OLD_HOLD)
        assert not is_held(row)
        assert "held_by_filled" not in [e["kind"] for e in led.events()]
        assert led.verify().ok


def test_a_migration_that_fails_part_way_leaves_the_ledger_as_it_was(ledger_path):
    """The sqlite-utils statements of a migration run inside its one BEGIN IMMEDIATE: when a
    later statement fails, the earlier ones (an added column) are rolled back too."""
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    assert ledger_module.migrate(conn, 2) == 2
    conn.execute("CREATE TABLE refusals (x)")  # migration 3 creates it: it will fail there
    with pytest.raises(sqlite3.OperationalError, match="refusals"):
        ledger_module.migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    columns = [c[1] for c in conn.execute("PRAGMA table_info(callbacks)")]
    assert "receipt" not in columns  # added by migration 3 before it failed, then rolled back
    assert not conn.in_transaction
    conn.close()


def test_opening_an_up_to_date_ledger_loads_no_sqlite_utils(ledger_path):
    import subprocess
    import sys

    Ledger(ledger_path).close()
    code = ("import sys\nfrom omi_batch.ledger import Ledger\n"
            f"Ledger({str(ledger_path)!r}).close()\nprint('sqlite_utils' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.strip() == "False"


def test_a_ledger_from_a_newer_omi_batch_is_refused(ledger_path):
    Ledger(ledger_path).close()
    conn = sqlite3.connect(ledger_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(LedgerError, match="schema version 99, newer than this omi-batch knows"):
        Ledger(ledger_path)


# --------------------------------------------------------------------------- group commit (issue 6)


def callback_args(batch_id, row, data=None, refused=None, phase="execute"):
    """receive_callback's keyword arguments, as the webhook receiver passes them."""
    return {
        "batch_id": batch_id,
        "row": row,
        "phase": phase,
        "raw_body": json.dumps(data).encode() if data is not None else b"{not json",
        "headers": {"Content-Type": "application/json", "X-Omi-Batch-Token": TOKEN},
        "remote": "127.0.0.1",
        "body": data,
        "refused": refused,
    }


def mixed_callbacks(batch_id):
    return [
        callback_args(batch_id, 2, body()),
        callback_args(batch_id, 2, body()),
        callback_args(batch_id, 3, body("ERROR", None, message="agent locked")),
        callback_args(batch_id, 99, body()),
        callback_args(batch_id, 4, body(), refused="bad_credential"),
        callback_args(batch_id, 4, None),
    ]


def test_callbacks_stored_together_get_the_verdicts_they_would_get_one_by_one(tmp_path):
    outcomes = []
    for name in ("one-by-one", "grouped"):
        with Ledger(tmp_path / f"{name}.db") as led:
            batch_id = new_batch(led)
            for row in (2, 3, 4):
                submitted_row(led, batch_id, row)
            if name == "grouped":
                verdicts = led.receive_callbacks(mixed_callbacks(batch_id))
            else:
                verdicts = [led.receive_callback(**a) for a in mixed_callbacks(batch_id)]
            rows = [(r["row"], r["state"], r["error"]) for r in led.rows(batch_id)]
            stored = [(c["row"], c["verdict"], c["headers"]) for c in led.callbacks(batch_id)]
            kinds = [e["kind"] for e in led.events()]
            outcomes.append((verdicts, rows, stored, kinds, led.verify().ok))
            assert TOKEN.encode() not in (tmp_path / f"{name}.db").read_bytes()

    assert outcomes[0] == outcomes[1]
    verdicts, rows, stored, kinds, ok = outcomes[1]
    assert verdicts == [
        "applied",
        "duplicate",
        "applied",
        "unknown",
        "refused:bad_credential",
        "refused:bad_json",
    ]
    assert rows == [(2, "succeeded", None), (3, "failed", "agent locked"), (4, "submitted", None)]
    assert [s[:2] for s in stored] == [
        (row, v) for row, v in zip([2, 2, 3, 99, 4, 4], verdicts, strict=True)
    ]
    assert all(s[2] == {"Content-Type": "application/json"} for s in stored)
    assert kinds[-6:] == [
        "callback_applied",
        "callback_duplicate",
        "callback_applied",
        "callback_unknown",
        "callback_refused",
        "callback_refused",
    ]
    assert ok


class ExplodingBody(dict):
    """A body whose reading fails, the way a bug in applying a callback would."""

    def get(self, *args):
        raise RuntimeError("boom")


def test_a_callback_that_fails_to_apply_is_kept_as_error_and_the_others_are_stored(led):
    batch_id = new_batch(led)
    for row in (2, 3, 4):
        submitted_row(led, batch_id, row)
    group = [
        callback_args(batch_id, 2, body(request_id="req-2")),
        {**callback_args(batch_id, 3, body()), "body": ExplodingBody(body())},
        callback_args(batch_id, 4, body(request_id="req-4")),
    ]

    results = led.receive_callbacks(group)

    assert results[0] == results[2] == "applied"
    assert (type(results[1]), str(results[1])) == (RuntimeError, "boom")
    assert [(c["row"], c["verdict"]) for c in led.callbacks(batch_id)] == [
        (2, "applied"),
        (3, "error"),
        (4, "applied"),
    ]
    assert led.row(batch_id, 3)["state"] == "submitted"
    assert [e["kind"] for e in led.events()][-3:] == [
        "callback_applied",
        "callback_error",
        "callback_applied",
    ]
    assert led.verify().ok
    assert led.read_head_file() == (len(led.events()), led.head())


def test_a_callback_the_ledger_refuses_leaves_the_others_of_its_group_stored(led, ledger_path):
    batch_id = new_batch(led)
    for row in (2, 3, 4):
        submitted_row(led, batch_id, row)
    conn = sqlite3.connect(ledger_path)
    conn.execute(
        'CREATE TRIGGER refuse_row_3 BEFORE INSERT ON callbacks WHEN NEW."row" = 3 '
        "BEGIN SELECT RAISE(ABORT, 'row 3 is refused'); END"
    )
    conn.commit()
    conn.close()

    results = led.receive_callbacks(
        [callback_args(batch_id, row, body(request_id=f"req-{row}")) for row in (2, 3, 4)]
    )

    assert (results[0], results[2]) == ("applied", "applied")
    assert (type(results[1]), str(results[1])) == (
        LedgerError,
        f"ledger {ledger_path}: row 3 is refused",
    )
    assert [(c["row"], c["verdict"]) for c in led.callbacks(batch_id)] == [
        (2, "applied"),
        (4, "applied"),
    ]
    assert [led.row(batch_id, row)["state"] for row in (2, 3, 4)] == [
        "succeeded",
        "submitted",
        "succeeded",
    ]
    assert led.verify().ok
    assert led.read_head_file() == (len(led.events()), led.head())


# --------------------------------------------------------------------------- head file (issue 5/6)


def test_the_head_file_is_one_fixed_width_record_rewritten_in_place(led):
    led.log("one")
    first = led.head_path.stat().st_ino
    led.log("two")
    data = led.head_path.read_bytes()
    assert len(data) == ledger_module.HEAD_RECORD
    assert data.endswith(b"\n")
    assert json.loads(data) == {"id": 2, "hash": led.head()}
    assert led.head_path.stat().st_ino == first


def test_a_head_file_removed_or_replaced_while_open_is_written_again(led):
    led.log("one")
    led.head_path.unlink()
    led.log("two")
    assert led.read_head_file() == (2, led.head())
    replacement = led.head_path.with_name("elsewhere")
    replacement.write_text(json.dumps({"id": 1, "hash": "0" * 64}) + " " * 300)
    replacement.replace(led.head_path)
    led.log("three")
    assert led.read_head_file() == (3, led.head())
    assert len(led.head_path.read_bytes()) == ledger_module.HEAD_RECORD
    assert led.verify().ok


def test_two_ledger_objects_never_move_the_head_back(ledger_path):
    with Ledger(ledger_path) as first, Ledger(ledger_path) as second:
        first.log("one")
        second.log("two")
        first.head_file.publish(1, first.events()[0]["hash"])  # a late publish of an older event
        assert first.read_head_file() == (2, second.head())
        assert first.verify().ok


def test_a_callback_reads_only_its_own_rows_attempts_however_big_the_batch(tmp_path):
    from omi_batch.ledger.judging import REQUESTS_GIVEN_SQL

    Ledger(tmp_path / "ledger.db").close()
    conn = sqlite3.connect(tmp_path / "ledger.db")
    try:
        plan = conn.execute("EXPLAIN QUERY PLAN " + REQUESTS_GIVEN_SQL, ("B", 2, "execute"))
        plan = plan.fetchall()
    finally:
        conn.close()
    assert [step[-1] for step in plan] == [
        "SEARCH attempts USING INDEX attempts_by_row (batch_id=? AND row=?)"
    ]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.dictionaries(st.text(), _JSON_VALUES, max_size=4),
    at=st.text(),
    kind=st.text(),
    batch_id=st.none() | st.text(),
    row=st.none() | st.integers(),
)
def test_the_hashed_spelling_is_json_dumps_spelling_for_any_event(data, at, kind, batch_id, row):
    """An event's hashed text is spelled without json.dumps' per-call encoder, and must stay
    byte for byte what json.dumps gives: every ledger written before is verified with it."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)  # fmt: skip
    assert ledger_module.canonical_json(data) == canonical

    def dumps(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    expected = (f'{{"at":{dumps(at)},"batch_id":{dumps(batch_id)},"data":{canonical},'
                f'"id":7,"kind":{dumps(kind)},"row":{dumps(row)}}}')  # fmt: skip
    assert ledger_module.event_text(7, at, kind, batch_id, row, canonical) == expected
