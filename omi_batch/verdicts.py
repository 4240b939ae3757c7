"""Callback rules: how a callback body is read and what it does to its row. Pure: no SQL, no
I/O, so every rule can be read (and tested) on its own.

Verdicts: ``applied``, ``late`` (applied to an unconfirmed row), ``confirmed``, ``duplicate``,
``stored`` (a preview count), ``stale`` (an ERROR of an older request of a resubmitted row: kept,
not applied), ``conflict`` (a different final result: kept, flagged ``needs_review``, not
applied), ``unexpected``, ``unknown``, ``error`` (applying it failed: kept) and
``refused:<reason>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omi_batch.bodies import count_text, safe_text
from omi_batch.states import FINAL, NEEDS_REVIEW, OUTCOME_UNKNOWN, review_error

# Verdicts that count as the row's result (callbacks.applied = 1).
APPLIED_VERDICTS = ("applied", "late", "confirmed")
# Verdicts of a callback that was not accepted: refused ones start with REFUSED.
NOT_ACCEPTED = ("unknown", "error")
REFUSED = "refused:"
MAX_COUNT = 2**63 - 1  # the largest integer SQLite stores


def is_accepted(verdict: str) -> bool:
    """Whether a stored callback was accepted (neither refused, unknown nor failed)."""
    return not verdict.startswith(REFUSED) and verdict not in NOT_ACCEPTED


def whole_count(value: Any) -> int | None:
    """The one count rule, for callbacks and answers alike (issue 12): a JSON integer from 0 to
    2**63-1 is a count; anything else (absent, a bool, a float, a string, a negative or a huge
    number) is None, and a present one is kept, never applied."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def review(current: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The row changes of a conflicting callback: flag the row and say why in its error, so
    the results report and ``status`` show it (the earlier error, if any, is kept after it)."""
    return {"needs_review": 1, "error": review_error(current.get("error"), what)[:1000]}


def parse_result(body: Mapping[str, Any]) -> dict[str, Any]:
    """requestId, status and payload.updatedRecords (and an ERROR's message) of a body."""
    payload = body.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    status = body.get("status")
    request_id = body.get("requestId")
    message = payload.get("message") or payload.get("error") or body.get("message")
    raw = payload.get("updatedRecords")
    count = whole_count(raw)
    result: dict[str, Any] = {
        "request_id": None if request_id is None else safe_text(str(request_id))[:200],
        "status": safe_text(status.strip().upper())[:40] if isinstance(status, str) else None,
        "updated_records": count,
    }
    if raw is not None and count is None:  # kept raw, not applied
        result["bad_count"] = count_text(raw)
    if result["status"] == "ERROR":
        result["error"] = safe_text(str(message))[:500] if message else "OMI reported ERROR"
    return result


def not_a_count(current: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """The row changes of a callback whose updatedRecords is not a count: flagged, not applied."""
    text = f"{NEEDS_REVIEW}: updatedRecords is not a count ({result['bad_count']})"
    before = current.get("error")
    if before and not str(before).startswith(f"{NEEDS_REVIEW}:"):
        text = f"{text}; {before}"
    return {"needs_review": 1, "error": text[:1000]}


def foreign_request(current: Mapping[str, Any], theirs: str) -> dict[str, Any]:
    """The row changes of a SUCCESS naming a request this row was not given: flagged only."""
    text = f"{NEEDS_REVIEW}: a SUCCESS callback named request {theirs}, not one of this row's"
    before = current.get("error")
    if before and not str(before).startswith(f"{NEEDS_REVIEW}:"):
        text = f"{text}; {before}"
    return {"needs_review": 1, "error": text[:1000]}


def moved_in_all(
    counted: Mapping[str | None, int | None], request_id: str | None, updated: int | None
) -> int | None:
    """What a row's requests moved together: the figure of each request counted once (those in
    ``counted``, and ``request_id``'s ``updated`` if it is not among them); None when no
    request said."""
    figures = dict(counted)
    figures.setdefault(request_id, updated)
    known = [n for n in figures.values() if n is not None]
    return sum(known) if known else None


def judge_execute(
    current: Mapping[str, Any],
    result: Mapping[str, Any],
    older: bool = False,
    *,
    at: str,
    counted: Mapping[str | None, int | None] | None = None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The verdict of an execute callback on ``current`` and the row changes it brings;
    ``older``: the callback is known to name an earlier request of this row; ``at``: now;
    ``counted``: what each request of this row moved, by the SUCCESS callbacks applied so far.
    A row submitted again can have a SUCCESS for each of its requests: its ``updated_records``
    is their sum (the first moved the conversations, the second found nothing left)."""
    counted = counted or {}
    status = result.get("status")
    updated = result.get("updated_records")
    state = current["state"]
    if status not in ("SUCCESS", "ERROR"):
        return "unexpected", {}, {"reason": "status is neither SUCCESS nor ERROR"}
    theirs, ours = result.get("request_id"), current.get("request_id")
    if status == "ERROR" and theirs and (older or (ours and theirs != ours)):
        # An older request of a row submitted again: its failure says nothing of the
        # current request (which may well succeed). A SUCCESS of any request of this row,
        # though, is proof: the transfer is the same, so it is applied as usual below.
        return "stale", {}, {"current_request_id": ours}
    if state in OUTCOME_UNKNOWN:
        changes: dict[str, Any] = {
            "callback_status": status,
            "updated_records": updated,
            "completed_at": at,
            "verified_by": "callback",
        }
        if not current.get("request_id") and result.get("request_id"):
            changes["request_id"] = result["request_id"]
        if status == "SUCCESS":
            changes.update(state="succeeded", error=None,
                           updated_records=moved_in_all(counted, theirs, updated))  # fmt: skip
        else:
            changes.update(state="failed", error=result.get("error"))
        return ("late" if state == "unconfirmed" else "applied"), changes, {}
    if state in FINAL:
        applied_status = current.get("callback_status")
        if applied_status is not None:  # a callback already gave this row its result
            if status == applied_status == "SUCCESS" and theirs not in counted:
                # another request of this row (sent again after an interruption): its figure
                # is added, so the row says what all its requests moved
                total = moved_in_all(counted, theirs, updated)
                return "confirmed", {"updated_records": total}, {"request_records": updated}
            same = status == applied_status and (
                updated == counted[theirs] if theirs in counted
                else updated == current.get("updated_records")
            )  # fmt: skip
            if same:
                return "confirmed", {}, {}
            return (
                "conflict",
                review(current, f"{applied_status} then {status}"),
                {
                    "applied_status": applied_status,
                    "applied_records": current.get("updated_records"),
                },
            )
        expected = "SUCCESS" if state == "succeeded" else "ERROR"
        if status == expected:  # settled by a verifying preview or by the HTTP answer
            changes = {"callback_status": status}
            if updated is not None:
                changes["updated_records"] = moved_in_all(counted, theirs, updated)
            return "confirmed", changes, {}
        how = "verified by preview" if current.get("verified_by") == "preview" else state
        return "conflict", review(current, f"{how}, then {status}"), {"row_state": state}
    return "unexpected", {}, {"row_state": state}
