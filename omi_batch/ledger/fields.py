"""What a row of the ledger is made of: the columns callers may set, an attempt's columns, and
how messages and events name a transfer. The bottom of the ledger's row parts: imports no part."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omi_batch.errors import LedgerError
from omi_batch.states import CONVERSATIONS

# Row columns a caller may set through record_step / update_row (never the identity, the state
# or updated_at, which the ledger writes itself).
ROW_FIELDS = frozenset(
    {
        "source_email",
        "target_email",
        "requested_target",
        "via",
        "conv_ids",
        "replace_existing_members",
        "note",
        "conversations_previewed",
        "preview_request_id",
        "preview_error",
        "previewed_at",
        "approved_at",
        "approved_by",
        "approved_how",
        "request_id",
        "submitted_at",
        "completed_at",
        "updated_records",
        "callback_status",
        "error",
        "attempts",
        "needs_review",
        "held_by",
        "verified_by",
    }
)
ATTEMPT_FIELDS = (
    "endpoint",
    "number",
    "started_at",
    "elapsed_ms",
    "http_status",
    "vendor_code",
    "error",
    "request_id",
    "wait_s",
    "message",
    "outcome_unknown",
)
# The keys of a record_steps step that are not row fields.
STEP_KEYS = frozenset({"batch_id", "row", "kind", "event", "state", "expect", "phase", "reason"})


def as_dict(item: Any) -> dict:
    """A mapping or dataclass instance as a plain dict (rows may be roster ``Transfer``s)."""
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    raise TypeError(f"expected a dict or a dataclass, got {type(item).__name__}")


def check_fields(fields: Mapping[str, Any]) -> None:
    """LedgerError unless every key of ``fields`` is a row column callers may set."""
    unknown = sorted(set(fields) - ROW_FIELDS)
    if unknown:
        raise LedgerError(f"not a row field the ledger lets callers set: {', '.join(unknown)}")


def named(row: int, kind: str = CONVERSATIONS) -> str:
    """How a message names a transfer: ``row 5``, or ``row 5 (tickets)`` for a ticket one."""
    return f"row {row}" if kind == CONVERSATIONS else f"row {row} ({kind})"


def with_kind(data: dict, kind: str) -> dict:
    """An event's data, naming the transfer's kind when it is not the conversation one (so
    the events of every ledger written before tickets read the same)."""
    return data if kind == CONVERSATIONS else {"kind": kind, **data}
