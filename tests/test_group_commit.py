"""Group commits shared by the pipeline's row steps and the in-process receiver's callbacks:
``Ledger.record_group``, ``SerialLedger.receive_callbacks``, ``ledger.serial.NotifyingLedger`` and the
per-row wake-up of ``Pipeline.notify`` (issue 5)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from omi_batch.config import Secret, Settings
from omi_batch.errors import IllegalTransition
from omi_batch.ledger import Ledger
from omi_batch.ledger.serial import NotifyingLedger, SerialLedger
from omi_batch.pipeline import Pipeline

ROWS = 6


@pytest.fixture
def led(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


def new_batch(led: Ledger, rows: int = ROWS, state: str = "submitted") -> str:
    """A batch whose rows 1..rows are ``state`` (planned → previewed → approved → submitted)."""
    batch_id = led.create_batch(
        source_file="departures.csv", source_sha256="ab" * 32, created_by="hr-admin",
        base_url="http://127.0.0.1:1", options={}, input_rows=rows, warnings=[],
        rows=[{"row": n, "source_email": f"s{n}@example.vn", "target_email": f"t{n}@example.vn"}
              for n in range(1, rows + 1)],
    )  # fmt: skip
    for n in range(1, rows + 1):
        led.record_step(batch_id, n, event="previewed", state="previewed",
                        conversations_previewed=1)  # fmt: skip
    led.approve(batch_id, approve=range(1, rows + 1), by="hr-admin", how="all")
    if state == "submitted":
        for n in range(1, rows + 1):
            led.record_step(batch_id, n, event="submitted", state="submitted")
    return batch_id


def callback(batch_id: str, row: int, status: str = "SUCCESS") -> dict:
    """receive_callback's keyword arguments, as the webhook receiver passes them."""
    data = {"requestId": f"req-{row}", "status": status, "action": "CONVERSATION_AGENT_TRANSFER",
            "payload": {"updatedRecords": 1}}  # fmt: skip
    return {"batch_id": batch_id, "row": row, "phase": "execute",
            "raw_body": json.dumps(data).encode(), "headers": {"Content-Type": "application/json"},
            "remote": "127.0.0.1", "body": data}  # fmt: skip


def step(batch_id: str, row: int, **fields) -> dict:
    return dict({"event": "accepted", "phase": "execute"}, batch_id=batch_id, row=row, **fields)


def commits(led: Ledger) -> list[str]:
    """The COMMIT statements this thread's ledger connection runs from now on."""
    seen: list[str] = []
    led._connection().set_trace_callback(seen.append)
    return seen


def test_record_group_writes_steps_and_callbacks_in_one_transaction(led):
    batch_id = new_batch(led)
    statements = commits(led)
    steps, verdicts = led.record_group(
        [step(batch_id, 1, request_id="req-1"), step(batch_id, 2, request_id="req-2")],
        [callback(batch_id, 1), callback(batch_id, 3, "ERROR")],
    )
    assert steps == [None, None]
    assert verdicts == ["applied", "applied"]
    assert [s for s in statements if s == "COMMIT"] == ["COMMIT"]
    states = {r["row"]: (r["state"], r["request_id"]) for r in led.rows(batch_id)}
    assert states[1] == ("succeeded", "req-1")
    assert states[2] == ("submitted", "req-2")
    assert states[3][0] == "failed"
    assert led.verify().ok


def test_record_group_keeps_the_others_when_one_step_is_refused(led):
    batch_id = new_batch(led)
    steps, verdicts = led.record_group(
        [step(batch_id, 1, state="succeeded", expect=["approved"]), step(batch_id, 2)],
        [callback(batch_id, 4)],
    )
    assert isinstance(steps[0], IllegalTransition)
    assert str(steps[0]) == f"row 1 of batch {batch_id} is submitted, not approved"
    assert steps[1] is None
    assert verdicts == ["applied"]
    assert led.row(batch_id, 1)["state"] == "submitted"
    assert led.row(batch_id, 4)["state"] == "succeeded"
    assert led.verify().ok


def test_serial_ledger_commits_steps_and_callbacks_from_many_threads(led):
    batch_id = new_batch(led, rows=40)
    serial = SerialLedger(led)

    def work(n: int) -> object:
        if n % 2:
            return serial.receive_callbacks([callback(batch_id, n)])
        serial.record_step(batch_id, n, event="accepted", phase="execute", request_id=f"r{n}")
        return None

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(work, range(1, 41)))
    assert outcomes == [["applied"] if n % 2 else None for n in range(1, 41)]
    rows = {r["row"]: r for r in led.rows(batch_id)}
    assert {n for n, r in rows.items() if r["state"] == "succeeded"} == set(range(1, 41, 2))
    assert all(rows[n]["request_id"] == f"r{n}" for n in range(2, 41, 2))
    assert led.verify().ok


def test_serial_ledger_raises_a_step_refusal_to_its_caller_only(led):
    batch_id = new_batch(led, rows=2)
    serial = SerialLedger(led)
    with pytest.raises(IllegalTransition, match=f"row 1 of batch {batch_id} cannot go from"):
        serial.record_step(batch_id, 1, event="planned_again", state="planned")
    assert serial.receive_callbacks([callback(batch_id, 2)]) == ["applied"]


@pytest.mark.parametrize("through_serial", [True, False])
def test_notifying_ledger_stores_a_group_and_wakes_each_of_its_rows(led, through_serial):
    batch_id = new_batch(led, rows=3)
    serial = SerialLedger(led) if through_serial else None
    woken: list[tuple] = []
    notifying = NotifyingLedger(led, lambda *key: woken.append(key), serial)
    verdicts = notifying.receive_callbacks([callback(batch_id, 1), callback(batch_id, 2)])
    assert verdicts == ["applied", "applied"]
    assert notifying.receive_callback(**callback(batch_id, 3, "ERROR")) == "applied"
    assert woken == [(batch_id, 1), (batch_id, 2), (batch_id, 3)]
    assert [r["state"] for r in led.rows(batch_id)] == ["succeeded", "succeeded", "failed"]
    assert notifying.receive_callback(**callback(batch_id, 3, "ERROR")) == "duplicate"


def test_notifying_ledger_raises_what_the_ledger_raises_and_still_wakes(led):
    batch_id = new_batch(led, rows=1)
    serial = SerialLedger(led)
    woken: list[tuple] = []
    notifying = NotifyingLedger(led, lambda *key: woken.append(key), serial)
    bad = dict(callback(batch_id, 1), headers=["not", "a", "mapping"])
    with pytest.raises(AttributeError, match="'list' object has no attribute 'items'"):
        notifying.receive_callback(**bad)
    assert woken == [(batch_id, 1)]
    assert led.row(batch_id, 1)["state"] == "submitted"


def test_a_malformed_callback_fails_alone_in_a_group_with_steps(led):
    batch_id = new_batch(led, rows=3)
    bad = dict(callback(batch_id, 2), headers=["not", "a", "mapping"])
    steps, verdicts = led.record_group(
        [step(batch_id, 1, request_id="req-1")], [bad, callback(batch_id, 3)]
    )
    assert steps == [None]
    assert isinstance(verdicts[0], AttributeError)
    assert verdicts[1] == "applied"
    assert [r["state"] for r in led.rows(batch_id)] == ["submitted", "submitted", "succeeded"]
    assert led.verify().ok


def test_a_receiver_given_the_serial_ledger_commits_its_callbacks_with_the_steps_queued(led):
    batch_id = new_batch(led, rows=2, state="approved")
    new_batch_rows = led.rows(batch_id)
    assert [r["state"] for r in new_batch_rows] == ["approved", "approved"]
    serial = SerialLedger(led, gather=3600)  # the committer waits: only a write commits the queue
    serial.record_step_soon(batch_id, 1, event="submitted", state="submitted")
    serial.record_step_soon(batch_id, 2, event="submitted", state="submitted")
    statements = commits(led)
    notifying = NotifyingLedger(led, lambda *key: None, serial)
    assert notifying.receive_callbacks([callback(batch_id, 1)]) == ["applied"]
    assert [s for s in statements if s == "COMMIT"] == ["COMMIT"]  # the steps and the callback
    assert [r["state"] for r in led.rows(batch_id)] == ["succeeded", "submitted"]
    assert serial.flush() == []
    assert led.verify().ok


def test_notify_wakes_the_wait_for_that_row_only(led):
    batch_id = new_batch(led, rows=2)
    settings = Settings(base_url="http://127.0.0.1:1", api_key=Secret("k"))
    pipeline = Pipeline(led, settings, poll_interval=30)
    calls: list[int] = []
    ready = threading.Event()
    done = threading.Event()
    found: list[object] = []

    def check() -> object:
        calls.append(1)
        ready.set()
        return "finished" if done.is_set() else None

    waiter = threading.Thread(
        target=lambda: found.append(pipeline._wait_for(check, 20, (batch_id, 1)))
    )
    waiter.start()
    assert ready.wait(20)
    pipeline.notify(batch_id, 2)  # another row: this wait sleeps on
    done.set()
    pipeline.notify(batch_id, 1)
    waiter.join(20)
    assert found == ["finished"]
    assert len(calls) == 2
    assert pipeline._waiters == {}


def test_steps_recorded_soon_are_committed_together_by_the_next_flush(led):
    batch_id = new_batch(led, rows=ROWS, state="approved")
    serial = SerialLedger(led, gather=3600)  # the committer waits: flush() commits them
    statements = commits(led)
    for n in range(1, ROWS + 1):
        serial.record_step_soon(batch_id, n, event="submitted", state="submitted")
    assert {r["state"] for r in led.rows(batch_id)} == {"approved"}  # none committed yet
    assert serial.flush() == []
    assert [s for s in statements if s == "COMMIT"] == ["COMMIT"]
    assert {r["state"] for r in led.rows(batch_id)} == {"submitted"}
    assert led.verify().ok


def test_a_step_recorded_soon_is_committed_by_the_committer_when_nobody_else_writes(led):
    batch_id = new_batch(led, rows=2, state="approved")
    serial = SerialLedger(led, gather=0)
    serial.record_step_soon(batch_id, 1, event="submitted", state="submitted")
    for _ in range(500):  # bounded: the committer thread commits it on its own
        if led.row(batch_id, 1)["state"] == "submitted":
            break
        threading.Event().wait(0.01)
    assert led.row(batch_id, 1)["state"] == "submitted"
    assert serial.flush() == []


def test_a_step_recorded_soon_and_refused_is_handed_to_flush_and_the_others_kept(led):
    batch_id = new_batch(led, rows=3, state="approved")
    serial = SerialLedger(led, gather=3600)
    serial.record_step_soon(batch_id, 1, event="submitted", state="submitted")
    serial.record_step_soon(batch_id, 2, event="previewed_again", state="planned")
    serial.record_step_soon(batch_id, 3, event="submitted", state="submitted")
    refused = serial.flush()
    assert [str(e) for e in refused] == [
        f"row 2 of batch {batch_id} cannot go from approved to planned"
    ]
    assert isinstance(refused[0], IllegalTransition)
    assert [r["state"] for r in led.rows(batch_id)] == ["submitted", "approved", "submitted"]
    assert serial.flush() == []  # handed over once


def test_a_write_after_steps_recorded_soon_sees_them_first(led):
    batch_id = led.create_batch(
        source_file="departures.csv", source_sha256="ab" * 32, created_by="hr-admin",
        base_url="http://127.0.0.1:1", options={}, input_rows=1, warnings=[],
        rows=[{"row": 1, "source_email": "s1@example.vn", "target_email": "t1@example.vn"}],
    )  # fmt: skip
    serial = SerialLedger(led, gather=3600)
    serial.record_step_soon(batch_id, 1, event="previewed", state="previewed",
                            conversations_previewed=1)  # fmt: skip
    assert serial.approve(batch_id, approve=[1], by="hr-admin", how="all") == 1
    kinds = [e["kind"] for e in led.events(batch_id)]
    assert kinds == ["batch_created", "previewed", "approved"]
    assert serial.flush() == []


def _committer_ended(serial: SerialLedger) -> bool:
    for _ in range(1000):  # bounded: the committer ends once the queue stays empty
        if serial._committer is None:
            return True
        threading.Event().wait(0.01)
    return False


def test_committer_threads_of_many_bursts_leave_no_connection_open(led):
    # Before: each burst of steps started a committer thread whose SQLite connection stayed
    # open until the ledger was closed (1,300 of them in a 10,000-row run).
    batch_id = new_batch(led, rows=12, state="approved")
    serial = SerialLedger(led, gather=0, linger=0)
    for n in range(1, 13):
        serial.record_step_soon(batch_id, n, event="submitted", state="submitted")
        assert _committer_ended(serial)
    assert {r["state"] for r in led.rows(batch_id)} == {"submitted"}
    assert len(led._connections) == 1  # this thread's only


def test_an_idle_committer_lingers_and_commits_the_next_burst_itself(led):
    batch_id = new_batch(led, rows=2, state="approved")
    serial = SerialLedger(led, gather=0, linger=30)
    serial.record_step_soon(batch_id, 1, event="submitted", state="submitted").result()
    first = serial._committer
    assert first is not None and first.is_alive()
    serial.record_step_soon(batch_id, 2, event="submitted", state="submitted")
    for _ in range(500):  # bounded: the lingering committer takes the second step
        if led.row(batch_id, 2)["state"] == "submitted":
            break
        threading.Event().wait(0.01)
    assert led.row(batch_id, 2)["state"] == "submitted"
    assert serial._committer is first  # the same thread: no new thread, no new connection
    serial.linger = 0
    serial._more.set()  # let it end now
    assert _committer_ended(serial)
    first.join(5)
    assert not first.is_alive()
    assert serial.flush() == []


def test_a_connection_does_not_outlive_its_thread_past_the_next_open(led):
    # A thread nobody closes for (a receiver's waitress thread, say): the next connection
    # opened, by any thread, closes the ended thread's one.
    batch_id = new_batch(led, rows=1, state="approved")
    reader = threading.Thread(target=lambda: led.row(batch_id, 1))
    reader.start()
    reader.join(5)
    assert [t for _, t, _ in led._connections] == [threading.current_thread(), reader]
    other = threading.Thread(target=lambda: led.row(batch_id, 1))
    other.start()
    other.join(5)
    assert [t for _, t, _ in led._connections] == [threading.current_thread(), other]
