"""A batch as a whole, for ``status`` and ``cancel``: its one state word (telling a batch that
runs from one left interrupted), its rows counted per state, the age of its preview, what to do
next, and cancelling it.

Light on purpose: the ledger over plain sqlite3 and a lock probe (no pandas, no HTTP), so
``status`` stays quick.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from omi_batch import locks
from omi_batch.errors import UsageError
from omi_batch.states import (
    APPROVED,
    BATCH_STATES,
    PLANNED,
    ROW_WORDS,
    STATES,
    SUBMITTED,
    UNCONFIRMED,
    batch_state,
    blocker_before,
)


def is_running(ledger_path: Any, batch_id: str) -> bool | None:
    """Whether a process executes or reconciles ``batch_id`` now (holds its batch lock);
    None when that cannot be known."""
    return locks.is_held(locks.batch_lock_path(ledger_path, batch_id))


def state_of(ledger_path: Any, batch: Mapping[str, Any]) -> str:
    """The batch's word (``states.batch_state``); the lock is asked only when a row is
    submitted with no result, to tell ``executing`` from ``interrupted``."""
    states = batch["states"]
    running = is_running(ledger_path, batch["id"]) if states.get(SUBMITTED) else None
    return batch_state(states, running)


def counts(states: Mapping[str, int]) -> dict[str, int]:
    """``{state: rows}`` in the states' own order, leaving out the states no row is in."""
    return {state: states[state] for state in STATES if states.get(state)}


def counts_text(states: Mapping[str, int]) -> str:
    """``4 previewed, 1 preview_failed``."""
    return ", ".join(f"{n} {state}" for state, n in counts(states).items())


def age(stamp: str | None, now: datetime | None = None) -> str:
    """How long ago ``stamp`` (the ledger's ISO UTC time) was: ``40 s ago``, ``12 min ago``,
    ``5 h ago``, ``3 d ago``; empty for None."""
    if not stamp:
        return ""
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:  # 90 min, not 1 h
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def overview(ledger: Any, state: str | None = None) -> list[dict]:
    """Every batch, newest first (only those whose word is ``state``, if given): ``batch,
    created_at, row_count, state, counts, previewed_at, source_file``. UsageError for a
    ``state`` no batch can be in (a row's word names the rows of one batch)."""
    if state is not None and state not in BATCH_STATES:
        rows_only = (
            " (a row state: name a BATCH to list its rows in it)" if state in ROW_WORDS else ""
        )
        raise UsageError(f"--state {state} is not a batch state{rows_only}; a batch is one of: "
                         f"{', '.join(BATCH_STATES)}")  # fmt: skip
    found = []
    for batch in ledger.batches():
        word = state_of(ledger.path, batch)
        if state is None or word == state:
            found.append({"batch": batch["id"], "created_at": batch["created_at"],
                          "row_count": batch["row_count"], "state": word,
                          "counts": counts(batch["states"]),
                          "previewed_at": batch.get("previewed_at"),
                          "source_file": batch["source_file"]})  # fmt: skip
    return found


def check_row_word(state: str) -> None:
    """UsageError unless ``state`` is a word `status BATCH` shows for rows."""
    if state not in ROW_WORDS:
        raise UsageError(f"--state {state} is not a row state; a row is one of: "
                         f"{', '.join(ROW_WORDS)}")  # fmt: skip


def execute_hint(batch_id: str, receiver: bool, why: str = "") -> str:
    """The Next line that points at execute; without a receiver (OMI_WEBHOOK_URL), the one
    with ``--listen``, saying why: without it the rows would end unconfirmed."""
    if receiver:
        return f"Next: omi-batch execute {batch_id}{why}"
    return (f"Next: omi-batch execute {batch_id} --listen 127.0.0.1:8080{why} (OMI_WEBHOOK_URL "
            "is not set: without a receiver the rows would end unconfirmed)")  # fmt: skip


def next_step(batch_id: str, word: str, rows: list[dict], receiver: bool) -> str | None:
    """What `status BATCH` suggests for a batch in ``word`` with ``rows`` (all of them): the
    command that moves it on, or None when no command would (done, failed rows are in the
    retry report, or running); never an execute that would only hold its rows again."""
    if word == "interrupted":
        due = sum(r["state"] == SUBMITTED for r in rows)
        return execute_hint(batch_id, receiver, f" resumes it ({due} row(s) were submitted and "
                                                "have no result yet)")  # fmt: skip
    if word == APPROVED:
        waiting = [r for r in rows if r["state"] == APPROVED]
        if all(blocker_before(rows, r) is not None for r in waiting):
            return ("Nothing to execute: every approved row is held behind a row of its source "
                    "that did not succeed (see the rows' errors)")  # fmt: skip
        return execute_hint(batch_id, receiver)
    if word == UNCONFIRMED:
        return (f"Next: omi-batch reconcile {batch_id} (previews the unconfirmed rows again: "
                "nothing left to move means succeeded)")  # fmt: skip
    if word == PLANNED:
        return f"Next: omi-batch preview --batch {batch_id} (finishes its preview)"
    return None


def cancel(ledger: Any, batch_id: str, *, by: str) -> int:
    """Cancel ``batch_id`` (``Ledger.cancel_batch``) holding its batch lock, so a batch that
    is being executed or reconciled right now is refused as busy; return its row count."""
    from omi_batch.pipeline import BatchLock

    with BatchLock(ledger.path, batch_id):
        return ledger.cancel_batch(batch_id, by=by)
