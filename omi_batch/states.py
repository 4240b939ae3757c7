"""Row states: every state word, the moves between them, the hold rule and the review flag.

The one table every module reads (ledger, pipeline, reports, jobs, cli); imports nothing, so
``status`` and ``--help`` can use it for free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class State(StrEnum):
    """A row's state in the ledger; the value is the word stored and shown."""

    PLANNED = "planned"
    PREVIEWED = "previewed"
    PREVIEW_FAILED = "preview_failed"
    APPROVED = "approved"
    SKIPPED = "skipped"
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNCONFIRMED = "unconfirmed"
    CANCELLED = "cancelled"


PLANNED = State.PLANNED.value
PREVIEWED = State.PREVIEWED.value
PREVIEW_FAILED = State.PREVIEW_FAILED.value
APPROVED = State.APPROVED.value
SKIPPED = State.SKIPPED.value
SUBMITTED = State.SUBMITTED.value
SUCCEEDED = State.SUCCEEDED.value
FAILED = State.FAILED.value
UNCONFIRMED = State.UNCONFIRMED.value
CANCELLED = State.CANCELLED.value

STATES: tuple[str, ...] = tuple(s.value for s in State)

# The moves the ledger allows; a move not listed raises IllegalTransition.
# ``cancelled`` (omi-batch cancel) is reachable from every state before a transfer was sent
# and leads nowhere: a cancelled batch is never previewed, approved or executed again.
TRANSITIONS: dict[str, set[str]] = {
    PLANNED: {PREVIEWED, PREVIEW_FAILED, SKIPPED, CANCELLED},
    PREVIEWED: {PREVIEWED, PREVIEW_FAILED, APPROVED, SKIPPED, CANCELLED},
    PREVIEW_FAILED: {PREVIEWED, PREVIEW_FAILED, SKIPPED, CANCELLED},
    APPROVED: {PREVIEWED, PREVIEW_FAILED, SKIPPED, SUBMITTED, CANCELLED},
    SKIPPED: {APPROVED, PREVIEWED, PREVIEW_FAILED, CANCELLED},
    # submitted -> approved: OMI refused the request (key, never connected), so nothing started.
    SUBMITTED: {SUBMITTED, SUCCEEDED, FAILED, UNCONFIRMED, APPROVED},
    UNCONFIRMED: {SUBMITTED, SUCCEEDED, FAILED, UNCONFIRMED},
    SUCCEEDED: set(),
    FAILED: set(),
    CANCELLED: set(),
}

FINAL = (SUCCEEDED, FAILED)  # a callback or a verifying preview decided it
TO_EXECUTE = (APPROVED, SUBMITTED, UNCONFIRMED)  # what execute submits (again)
OUTCOME_UNKNOWN = (SUBMITTED, UNCONFIRMED)  # sent, no result known: reconcile previews these
DECIDED = (SUBMITTED, UNCONFIRMED, SUCCEEDED, FAILED)  # past approval: left as they are
APPROVABLE = (PREVIEWED, APPROVED, SKIPPED)  # a report may approve or skip these
BEFORE_RESULTS = (PLANNED, PREVIEWED, APPROVED)  # no results status yet: shown as they are
PROBLEMS = (FAILED, UNCONFIRMED, PREVIEW_FAILED)  # a person must look (exit 1)
STARTED = (SUBMITTED, SUCCEEDED, FAILED, UNCONFIRMED)  # a transfer was sent at least once
CANCELLABLE = (PLANNED, PREVIEWED, PREVIEW_FAILED, APPROVED, SKIPPED)  # nothing sent yet

# ---------------------------------------------------------------------------- kinds

# What a transfer moves. A row of the input file is one transfer per kind its scope names (issue
# 15): ``(batch, row, kind)`` is a transfer's identity in the ledger.
CONVERSATIONS = "conversations"
TICKETS = "tickets"
KINDS = (CONVERSATIONS, TICKETS)
TICKET_PREFIX = "tickets-"  # a ticket transfer's phases: tickets-preview, tickets-execute, ...


def phase_of(kind: str, phase: str) -> str:
    """The phase word a transfer of ``kind`` is recorded (and called back) under: the
    conversation transfer keeps ``preview``/``execute``, the ticket one ``tickets-…``."""
    if not phase or kind == CONVERSATIONS or phase.startswith(TICKET_PREFIX):
        return phase
    return f"{TICKET_PREFIX}{phase}"


def kind_of(phase: str | None) -> str:
    """The kind of transfer a phase word (``tickets-execute``) belongs to."""
    return TICKETS if (phase or "").startswith(TICKET_PREFIX) else CONVERSATIONS


def base_phase(phase: str | None) -> str | None:
    """``tickets-execute`` → ``execute``: the phase whatever the kind."""
    if phase and phase.startswith(TICKET_PREFIX):
        return phase[len(TICKET_PREFIX) :]
    return phase


def kinds_of(scope: str | None) -> tuple[str, ...]:
    """The transfers a row's scope makes: ``both`` → conversations then tickets."""
    if scope == "both":
        return KINDS
    return (TICKETS,) if scope == TICKETS else (CONVERSATIONS,)


def key(row: Mapping[str, Any]) -> tuple[int, str]:
    """A transfer's identity within its batch: ``(row, kind)``."""
    return int(row["row"]), row.get("kind") or CONVERSATIONS


# ---------------------------------------------------------------------------- the hold rule

# A row in one of these holds the rows after it of the same source: a catch-all row must not
# take conversations an earlier ``conv_ids`` row was meant to route elsewhere.
HOLDING = (FAILED, PREVIEW_FAILED, UNCONFIRMED, SUBMITTED)
HELD = "held"  # the audit event of a held row, and the first word of its error text
ACCEPTED = "accepted"  # the audit event that stores an execute's 202 (with its request id if any)


def holds(row: Mapping[str, Any]) -> bool:
    """Whether ``row`` (as it is now) holds the later rows of its source."""
    return row["state"] in HOLDING


def held_error(blocker: Mapping[str, Any]) -> str:
    """The error text a held row carries for people: which row of its source holds it, and why."""
    return f"{HELD}: row {blocker['row']} of the same source is {blocker['state']}"


def hold(blocker: Mapping[str, Any]) -> dict[str, Any]:
    """The row changes that hold a row behind ``blocker``: ``held_by`` (the data) and the
    error text saying so."""
    return {"held_by": blocker["row"], "error": held_error(blocker)}


def is_held(row: Mapping[str, Any]) -> bool:
    """An approved row that execute held back behind a row of its source (``held_by``)."""
    return row["state"] == APPROVED and row.get("held_by") is not None


# A ``conv_ids`` row in one of these routes (or has routed) its conversations before its
# source's catch-all row runs. In any other state (skipped, not approved, failed its preview)
# the catch-all row would take them: OMI cannot leave conversations out of a transfer.
COVERING = (APPROVED, SUBMITTED, UNCONFIRMED, SUCCEEDED)


def covers(state: str) -> bool:
    """Whether a ``conv_ids`` row in ``state`` keeps its conversations from its source's
    catch-all row (see COVERING)."""
    return state in COVERING


def uncovered_by(rows: Iterable[Mapping[str, Any]], row: Mapping[str, Any]) -> Any:
    """For a catch-all row (no ``conv_ids``): the first ``conv_ids`` row of its source in
    ``rows`` that does not cover its conversations (see COVERING), or None."""
    if row["conv_ids"] or (row.get("kind") or CONVERSATIONS) != CONVERSATIONS:
        return None  # a ticket transfer takes no conversations
    for other in rows:
        same = other["source_email"] == row["source_email"] and key(other) != key(row)
        if same and other["conv_ids"] and not covers(other["state"]):
            return other
    return None


def blocker_before(rows: Iterable[Mapping[str, Any]], row: Mapping[str, Any]) -> Any:
    """The row of ``row``'s source that holds it, or None: the first one before it (in run
    order) that holds (see HOLDING), else, for a catch-all row, a ``conv_ids`` row that does
    not cover its conversations (see :func:`uncovered_by`)."""
    rows = list(rows)
    for earlier in rows:
        if key(earlier) == key(row):
            break
        if earlier["source_email"] == row["source_email"] and holds(earlier):
            return earlier
    return uncovered_by(rows, row)


# ---------------------------------------------------------------------------- review

NEEDS_REVIEW = "needs review"  # a row flagged by conflicting callbacks (rows.needs_review)
REVIEW_TEXT = f"{NEEDS_REVIEW}: conflicting callbacks"


def review_error(before: str | None, what: str | None = None) -> str:
    """The error of a row flagged for review, keeping the earlier error after it."""
    text = REVIEW_TEXT + (f" ({what})" if what else "")
    if before and not str(before).startswith(f"{NEEDS_REVIEW}:"):
        text = f"{text}; {before}"
    return text


def shown_error(row: Mapping[str, Any]) -> str:
    """A row's error as reports and tables show it: its execute error, else its preview's; a
    row flagged for review always says so (a later callback may have cleared the text)."""
    text = row["error"] or row["preview_error"] or ""
    if row.get("needs_review") and not text.startswith(f"{NEEDS_REVIEW}:"):
        text = review_error(text)
    return text


def result_status(row: Mapping[str, Any]) -> str:
    """The results report's one word for a row (the same word `status` shows)."""
    state = row["state"]
    if state in PROBLEMS or state == SUCCEEDED:
        return state
    if state == SUBMITTED:
        return UNCONFIRMED  # submitted, no callback yet: never call it a success
    return SKIPPED  # planned, previewed, approved-but-held, skipped


def count_states(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{state: how many rows}``."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


# The words of a whole batch (status, status --state), in the rows' own words where they can.
BATCH_STATES: tuple[str, ...] = (
    "empty", CANCELLED, "executing", "interrupted", PLANNED, APPROVED, PREVIEWED, UNCONFIRMED,
    FAILED, SUCCEEDED,
)  # fmt: skip
# The words `status BATCH` shows for rows (the results report's once a row has one).
ROW_WORDS: tuple[str, ...] = (PLANNED, PREVIEWED, APPROVED, CANCELLED, SUCCEEDED, FAILED,
                              UNCONFIRMED, SKIPPED, PREVIEW_FAILED)  # fmt: skip


def row_word(row: Mapping[str, Any]) -> str:
    """The word `status BATCH` shows for a row: its state before it has a results status
    (planned, previewed, approved, cancelled), the results report's word after."""
    if row["state"] in (PLANNED, PREVIEWED, APPROVED, CANCELLED):
        return row["state"]
    return result_status(row)


def batch_state(states: Mapping[str, int], running: bool | None = None) -> str:
    """One word for a batch, from its rows' states (``{state: rows}``). Before any row ran:
    ``cancelled``, ``planned``, ``approved``, ``previewed`` (``failed`` when every preview
    failed). A row submitted with no result: ``executing``, or ``interrupted`` when
    ``running`` is False (no process holds the batch's lock). After rows ran: ``unconfirmed``
    (some row is), ``failed`` (some approved row failed), ``approved`` (an approved row has
    not run yet: held, or approved since), else ``succeeded``: every approved row succeeded,
    whatever was skipped or failed its preview."""
    if not any(states.values()):
        return "empty"
    if states.get(CANCELLED):
        return CANCELLED
    if states.get(SUBMITTED):
        return "interrupted" if running is False else "executing"
    if not any(states.get(s) for s in (SUCCEEDED, FAILED, UNCONFIRMED)):
        for word in (APPROVED, PLANNED, PREVIEWED, SKIPPED):
            if states.get(word):
                return PREVIEWED if word == SKIPPED else word
        return FAILED  # every row failed its preview: nothing can be approved
    for word in (UNCONFIRMED, FAILED, APPROVED):
        if states.get(word):
            return word
    return SUCCEEDED


def stale_rows(
    rows: Iterable[dict], max_age_hours: float, now: datetime | None = None
) -> list[int]:
    """The rows whose preview is older than ``max_age_hours``: they must be previewed again."""
    now = now or datetime.now(UTC)
    stale = []
    for row in rows:
        at = row.get("previewed_at")
        if at and (now - datetime.fromisoformat(at.replace("Z", "+00:00"))).total_seconds() > (
            max_age_hours * 3600
        ):
            stale.append(row["row"])
    return stale
