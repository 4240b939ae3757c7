"""Judging a received callback against its transfer, inside the transaction that stores it: the
SQL the rules of ``omi_batch.verdicts`` need (duplicates, the requests a row was given, what was
counted already), and the verdict with the row changes it brings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from omi_batch.ledger.hashing import now
from omi_batch.ledger.store import Tx
from omi_batch.states import ACCEPTED, CONVERSATIONS, TICKETS, base_phase, kind_of, phase_of
from omi_batch.verdicts import (
    NOT_ACCEPTED,
    REFUSED,
    foreign_request,
    judge_execute,
    not_a_count,
)

# The SQL spelling of verdicts.is_accepted.
ACCEPTED_SQL = (
    f"verdict NOT LIKE '{REFUSED}%' AND verdict NOT IN ({', '.join(repr(v) for v in NOT_ACCEPTED)})"
)

# The request ids a row was given (repeats are dropped by the caller's set). No DISTINCT and
# ``+request_id`` keep SQLite on the row's index (attempts_by_row): on the batch's request index
# it read every attempt of the batch for each callback, a cost that grew with the batch.
REQUESTS_GIVEN_SQL = (
    'SELECT request_id FROM attempts WHERE batch_id = ? AND "row" = ? '
    "AND phase = ? AND +request_id IS NOT NULL"
)

# The callback body's ``action`` and the kind of transfer it reports.
ACTIONS = {"CONVERSATION_AGENT_TRANSFER": "conversations", "TICKET_AGENT_TRANSFER": TICKETS}

# The verdict of a SUCCESS that came before its row's 202 was stored: nothing is written yet.
HELD = "held"


def callback_key(batch_id: Any, row: Any, phase: Any, result: Mapping[str, Any]) -> tuple:
    """What makes two callbacks the same one: their transfer, phase, request, status and count
    (the columns a callback is stored under, and the ones a duplicate is looked up by)."""
    return (batch_id, row, phase, result.get("request_id"), result.get("status"),
            result.get("updated_records"))  # fmt: skip


def judge(
    tx: Tx,
    batch_id: str,
    row: int,
    phase: str,
    body: Mapping[str, Any],
    result: Mapping[str, Any],
    may_hold: bool,
) -> tuple[dict | None, str, dict[str, Any], dict[str, Any]]:
    """``(the transfer as stored, verdict, row changes, event extras)`` of an accepted callback
    (one not refused by the receiver); the verdict :data:`HELD` (with ``may_hold``) means the
    callback is to be tried again later and nothing is to be written."""
    kind = kind_of(phase)
    current = tx.one(
        'SELECT * FROM "rows" WHERE batch_id = ? AND "row" = ? AND kind = ?',
        (batch_id, row, kind),
    )
    changes: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    action = body.get("action")
    if current is None or base_phase(phase) not in ("preview", "execute"):
        verdict = "unknown"
    elif is_duplicate(tx, callback_key(batch_id, row, phase, result)):
        verdict = "duplicate"
    elif isinstance(action, str) and action in ACTIONS and ACTIONS[action] != kind:
        verdict = "unexpected"  # kept, not applied: this URL is the other transfer's
        extra = {"reason": f"action {action} is not a transfer of {kind}"}
    elif base_phase(phase) == "preview":
        verdict = "stored"
    elif result.get("bad_count") is not None:
        verdict, changes = "unexpected", not_a_count(current, result)
        extra = {"reason": "updatedRecords is not a count"}
    else:
        given = requests_given(tx, current)
        theirs = result.get("request_id")
        if (
            result.get("status") == "SUCCESS"
            and theirs not in given
            and (names_another_row(tx, current, theirs)
                 or (given and not unanswered_attempt(tx, current)))
        ):  # fmt: skip
            verdict, changes = "unexpected", foreign_request(current, str(theirs))
            extra = {"reason": "not a request of this row", "row_requests": sorted(given)}
        elif (result.get("status") == "SUCCESS" and not given and may_hold
              and current["state"] == "submitted" and not accepted(tx, current)):  # fmt: skip
            verdict = HELD  # its row's 202 is not stored yet: nothing written, tried later
        else:
            verdict, changes, extra = judge_execute(
                current, result, is_older_request(tx, current, result), at=now(),
                counted=counted(tx, batch_id, row, phase),
            )  # fmt: skip
    return current, verdict, changes, extra


def unanswered_attempt(tx: Tx, current: Mapping[str, Any]) -> bool:
    """Whether an execute attempt of the row may have been applied without telling us its
    request id (a timeout or reset after sending, a 5xx): a SUCCESS naming a request id we were
    never given (and no other transfer was) is then most likely that attempt's own, and counts
    for the row like any other of its requests, instead of being called another's."""
    found = tx.one(
        'SELECT id FROM attempts WHERE batch_id = ? AND "row" = ? AND phase = ? '
        "AND outcome_unknown = 1 LIMIT 1",
        (current["batch_id"], current["row"], execute_phase(current)),
    )
    return found is not None


def accepted(tx: Tx, current: Mapping[str, Any]) -> bool:
    """Whether the 202 of the row's latest submission is stored: an ``accepted`` event after
    the event that made it ``submitted``. A SUCCESS for a row with no request id is held only
    while it is not, so a 202 that carried no request id (or one under a name we do not read)
    does not hold its callback for the whole wait. Read newest first (``+`` keeps SQLite off
    the batch index, on the events' id order), so it stops at the row's last few events."""
    found = tx.execute(
        'SELECT kind, data FROM events WHERE +batch_id = ? AND +"row" = ? ORDER BY id DESC',
        (current["batch_id"], current["row"]),
    )
    for event, data in found:
        facts = json.loads(data)
        if facts.get("kind", CONVERSATIONS) != current["kind"]:
            continue
        if event == ACCEPTED:
            return True
        if facts.get("to") == "submitted":
            return False
    return False


def is_duplicate(tx: Tx, key: tuple) -> bool:
    """Whether an accepted callback with the same :func:`callback_key` is stored already."""
    found = tx.one(
        'SELECT id FROM callbacks WHERE batch_id = ? AND "row" = ? AND phase = ? '
        f"AND {ACCEPTED_SQL} "
        "AND request_id IS ? AND status IS ? AND updated_records IS ? LIMIT 1",
        key,
    )
    return found is not None


def requests_given(tx: Tx, current: Mapping[str, Any]) -> set[str]:
    """The request ids this row was given by OMI (its own and its earlier executes')."""
    given = {str(current["request_id"])} if current.get("request_id") else set()
    found = tx.execute(
        REQUESTS_GIVEN_SQL, (current["batch_id"], current["row"], execute_phase(current))
    )
    given.update(str(item[0]) for item in found)
    return given


def names_another_row(tx: Tx, current: Mapping[str, Any], theirs: Any) -> bool:
    """Whether ``theirs`` is a request id another transfer of the batch was given."""
    if not theirs:
        return False
    batch_id, row, kind = current["batch_id"], current["row"], current["kind"]
    found = tx.one(
        'SELECT 1 AS x FROM "rows" WHERE batch_id = ? AND NOT ("row" = ? AND kind = ?) '
        "AND request_id = ? "
        "UNION ALL SELECT 1 FROM attempts WHERE batch_id = ? AND phase IN (?, ?) "
        'AND NOT ("row" = ? AND phase = ?) AND request_id = ? LIMIT 1',
        (batch_id, row, kind, theirs, batch_id, "execute", phase_of(TICKETS, "execute"),
         row, execute_phase(current), theirs),
    )  # fmt: skip
    return found is not None


def counted(tx: Tx, batch_id: str, row: int, phase: str) -> dict[str | None, int | None]:
    """What each request of the transfer moved, by the SUCCESS callbacks already applied to
    it (the first one of each request): ``{request_id: updatedRecords}``."""
    found: dict[str | None, int | None] = {}
    for request_id, updated in tx.conn.execute(
        'SELECT request_id, updated_records FROM callbacks WHERE batch_id = ? AND "row" = ? '
        "AND phase = ? AND status = 'SUCCESS' AND applied = 1 ORDER BY id",
        (batch_id, row, phase),
    ):
        found.setdefault(request_id, updated)
    return found


def is_older_request(tx: Tx, current: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
    """True when the callback names a request this row had before it was submitted again:
    the row knows no request id now (a resubmit cleared it), yet an earlier execute attempt
    of the row was answered with this one."""
    theirs = result.get("request_id")
    if not theirs or current.get("request_id"):
        return False
    found = tx.one(
        'SELECT id FROM attempts WHERE batch_id = ? AND "row" = ? AND phase = ? '
        "AND request_id = ? LIMIT 1",
        (current["batch_id"], current["row"], execute_phase(current), theirs),
    )
    return found is not None


def execute_phase(current: Mapping[str, Any]) -> str:
    """The execute phase word of a transfer (``execute`` or ``tickets-execute``)."""
    return phase_of(current.get("kind") or "conversations", "execute")
