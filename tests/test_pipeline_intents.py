"""The intent before each request, when the next source's intent is saved while a callback is
awaited (issue 13 §4): OMI never sees a request whose row is not submitted in the ledger, and
a run stopped meanwhile puts the rows it never sent back as they were."""

from __future__ import annotations

import io
import json
import sqlite3
import threading

import pytest
from helpers import API_KEY, wait_until

from omi_batch.roster import read_plan
from omi_batch.simulator import Faults


def _sources(tmp_path, count: int) -> tuple[dict, object]:
    """A simulator fixture of ``count`` sources with one conversation each, and their CSV."""
    created = "2026-01-01T00:00:00Z"
    fixture = {
        "agents": [{"email": f"{who}{i}@example.vn", "name": f"{who} {i}"}
                   for i in range(count) for who in ("src", "tgt")],
        "conversations": [{"id": f"c{i}", "members": [f"src{i}@example.vn"],
                           "created_at": created} for i in range(count)],
    }  # fmt: skip
    path = tmp_path / "departures.csv"
    path.write_text("source_email,target_email\n" + "".join(
        f"src{i}@example.vn,tgt{i}@example.vn\n" for i in range(count)))  # fmt: skip
    return fixture, path


class _Spy:
    """The simulator behind a WSGI layer that, as each execute request arrives, reads its
    row's state from the ledger file (another connection: only what is committed)."""

    def __init__(self, sim, ledger_path):
        self.app, self.ledger_path, self.seen = sim.app(), ledger_path, []

    def __call__(self, environ, start_response):
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        body = json.loads(raw) if raw else {}
        if body.get("previewChanges") is False:
            conn = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True)
            try:
                found = conn.execute('SELECT state FROM "rows" WHERE source_email = ?',
                                     (body["sourceEmail"],)).fetchone()  # fmt: skip
            finally:
                conn.close()
            self.seen.append((body["sourceEmail"], found[0] if found else None))
        return self.app(environ, start_response)


@pytest.fixture
def spied(tmp_path):
    """``start(count, **faults)`` -> (spy, server, csv path); stopped at the end."""
    from omi_batch import webhook
    from omi_batch.simulator import Simulator

    running = []

    def start(count: int, **faults):
        fixture, path = _sources(tmp_path, count)
        sim = Simulator(fixture, api_key=API_KEY, faults=Faults(**faults))
        spy = _Spy(sim, tmp_path / "ledger.db")
        server = webhook.start(spy, "127.0.0.1", 0)
        running.append((sim, server))
        return spy, server, path

    yield start
    for sim, server in running:
        server.stop()
        sim.close()


def test_every_execute_request_reaches_omi_after_its_rows_intent_is_committed(spied, make_stack):
    # 12 sources, 4 at a time: each next source's intent is queued while a callback is awaited
    spy, server, path = spied(12)
    stack = make_stack(server, concurrency=4)
    batch_id = stack.run(path)
    assert sorted(spy.seen) == sorted((f"src{i}@example.vn", "submitted") for i in range(12))
    assert {r["state"] for r in stack.ledger.rows(batch_id)} == {"succeeded"}
    assert stack.ledger.verify().ok


def test_a_run_stopped_while_intents_wait_ahead_puts_the_unsent_rows_back(spied, make_stack):
    spy, server, path = spied(12, callback_delay=1.0)  # workers wait on callbacks, intents ahead
    stack = make_stack(server, concurrency=4)
    batch_id = stack.pipeline.create_batch(read_plan(path))
    stack.pipeline.preview(batch_id)
    stack.pipeline.approve(batch_id, approve_all=True)
    stopper = threading.Thread(target=lambda: (wait_until(lambda: len(spy.seen) >= 4),
                                               stack.pipeline.stop()))  # fmt: skip
    stopper.start()
    stack.pipeline.execute(batch_id)
    stopper.join(timeout=30)
    sent = {email for email, _ in spy.seen}
    rows = {r["source_email"]: r for r in stack.ledger.rows(batch_id)}
    assert 4 <= len(sent) < 12
    assert {r["state"] for email, r in rows.items() if email not in sent} == {"approved"}
    assert {r["state"] for email, r in rows.items() if email in sent} <= {"submitted",
                                                                          "succeeded"}  # fmt: skip
    put_back = [e for e in stack.ledger.events(batch_id) if e["kind"] == "submit_refused"]
    assert put_back, "no intent was saved ahead"
    assert {e["data"]["error"] for e in put_back} == {"not sent: the run stopped before it"}
    assert all(
        rows_email not in sent
        for rows_email in (stack.ledger.row(batch_id, e["row"])["source_email"] for e in put_back)
    )
    assert stack.ledger.verify().ok


def test_no_intent_is_saved_ahead_for_a_row_its_source_holds(tmp_path, make_stack):
    # src1's first row fails its preview (its target has no account), so its next row
    # is held: the worker taking src1 ahead while src0's callback is awaited saves no intent.
    from omi_batch import webhook
    from omi_batch.simulator import Simulator

    created = "2026-01-01T00:00:00Z"
    fixture = {
        "agents": [{"email": e, "name": e} for e in
                   ("src0@example.vn", "tgt0@example.vn", "src1@example.vn", "tgt1@example.vn")],
        "conversations": [{"id": c, "members": [s], "created_at": created} for c, s in
                          (("c0", "src0@example.vn"), ("c1", "src1@example.vn"),
                           ("c2", "src1@example.vn"))],
    }  # fmt: skip
    path = tmp_path / "departures.csv"
    path.write_text("source_email,target_email,conv_ids\n"
                    "src0@example.vn,tgt0@example.vn,\n"
                    "src1@example.vn,nobody@example.vn,c1\n"
                    "src1@example.vn,tgt1@example.vn,c2\n")  # fmt: skip
    sim = Simulator(fixture, api_key=API_KEY, faults=Faults(callback_delay=0.2))
    spy = _Spy(sim, tmp_path / "ledger.db")
    server = webhook.start(spy, "127.0.0.1", 0)
    try:
        stack = make_stack(server, concurrency=1)
        batch_id = stack.pipeline.create_batch(read_plan(path), check_agents=False)
        stack.pipeline.preview(batch_id)
        assert [r["state"] for r in stack.ledger.rows(batch_id)] == [
            "previewed", "preview_failed", "previewed"]  # fmt: skip
        stack.pipeline.approve(batch_id, approve_all=True)
        stack.pipeline.execute(batch_id)
    finally:
        server.stop()
        sim.close()
    assert spy.seen == [("src0@example.vn", "submitted")]
    held = stack.ledger.row(batch_id, 4)
    assert (held["state"], held["held_by"]) == ("approved", 3)
    sent = [e for e in stack.ledger.events(batch_id) if e["row"] == 4 and "submit" in e["kind"]]
    assert sent == []
    assert stack.ledger.verify().ok
