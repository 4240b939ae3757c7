"""Rebuilding every row from the audit events, so that ``verify`` notices a row edited outside
the chain (issue 12): what ``status`` and the reports show must follow from the events.

Each event of a row says what it wrote: a state move names its ``to`` and carries the fields it
set; an ``attempt`` of the execute phase counts one attempt; a ``callback_*`` event carries the
row ``changes`` it made; ``batch_created`` carries the plan's rows. Replaying them in id order
gives each row's columns, which are compared with the table (``updated_at`` aside: a clock,
not a fact). Batches created before the events carried their rows (schema 2) are skipped, with
a warning.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from omi_batch.ledger.schema import encode_field
from omi_batch.states import base_phase, kind_of, kinds_of

# Columns a row starts with (create_batch) and their defaults.
PLAN_COLUMNS = ("row", "seq", "source_email", "target_email", "requested_target", "via",
                "conv_ids", "replace_existing_members", "note")  # fmt: skip
IGNORED = frozenset({"batch_id", "row", "kind", "updated_at"})
BATCH_COLUMNS = ("created_at", "created_by", "source_file", "source_sha256", "base_url",
                 "row_count", "input_rows")  # fmt: skip
MAX_NAMED = 20  # differing rows named at most; the rest are counted


@dataclass
class Replay:
    """What the replay found: one line per differing row or batch, and warnings."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    differing: int = 0


def plan_row(item: dict, seq: int) -> dict:
    """A row's columns as create_batch stores them (the event's plan item)."""
    return {
        "seq": seq,
        "source_email": item["source_email"],
        "target_email": item["target_email"],
        "requested_target": item.get("requested_target") or item["target_email"],
        "via": encode_field("via", item.get("via")),
        "conv_ids": encode_field("conv_ids", item.get("conv_ids")),
        "replace_existing_members": encode_field(
            "replace_existing_members", item.get("replace_existing_members")
        ),
        "note": item.get("note") or "",
        "state": "planned",
        "attempts": 0,
        "needs_review": 0,
    }


def _show(value: Any) -> str:
    return repr(value)


def replay(conn: sqlite3.Connection, row_fields: frozenset[str]) -> Replay:
    """Replay the events on ``conn`` (inside the caller's read transaction) and compare."""
    found = Replay()
    rows: dict[tuple[str, int, str], dict] = {}
    batches: dict[str, dict] = {}
    old: set[str] = set()
    cursor = conn.execute(
        'SELECT kind, batch_id, "row", data FROM events '
        "WHERE batch_id IS NOT NULL AND (\"row\" IS NOT NULL OR kind = 'batch_created') "
        "ORDER BY id"
    )
    for kind, batch_id, row, text in cursor:
        try:
            data = json.loads(text)
        except ValueError:
            continue  # the chain check names an edited event
        if not isinstance(data, dict):
            continue
        if row is None:
            plan = data.get("rows")
            if not isinstance(plan, list):
                old.add(batch_id)
                continue
            batches[batch_id] = {k: data.get(k) for k in BATCH_COLUMNS}
            for seq, item in enumerate(plan):
                for transfer in kinds_of(item.get("scope")):
                    rows[(batch_id, int(item["row"]), transfer)] = plan_row(item, seq)
            continue
        transfer = data.get("kind") or kind_of(data.get("phase"))
        state = rows.get((batch_id, row, transfer))
        if state is None:
            continue
        if kind == "attempt":
            if base_phase(data.get("phase")) == "execute":
                state["attempts"] = state.get("attempts", 0) + 1
            continue
        if kind.startswith("callback_"):
            changes = data.get("changes") or {}
            for name, value in changes.items():
                state[name] = encode_field(name, value)
            continue
        for name, value in data.items():
            if name in row_fields:
                state[name] = encode_field(name, value)
        if "to" in data:
            state["state"] = data["to"]
    if old:
        found.warnings.append(
            f"{len(old)} batch(es) from before the events carried their rows: their rows "
            "are checked by the chain only"
        )
    _compare_batches(conn, batches, found)
    _compare_rows(conn, rows, old, found)
    return found


def _compare_batches(conn: sqlite3.Connection, batches: dict[str, dict], found: Replay) -> None:
    cursor = conn.execute(f"SELECT id, {', '.join(BATCH_COLUMNS)} FROM batches")
    for batch_id, *values in cursor:
        expected = batches.get(batch_id)
        if expected is None:
            continue
        table = dict(zip(BATCH_COLUMNS, values, strict=True))
        differ = [
            f"{name} is {_show(table[name])} in the table, {_show(expected[name])} in the events"
            for name in BATCH_COLUMNS
            if expected.get(name) is not None and table[name] != expected[name]
        ]
        if differ:
            found.differing += 1
            found.problems.append(
                f"batch {batch_id} differs from its audit events: {'; '.join(differ)}"
            )


def _compare_rows(
    conn: sqlite3.Connection,
    rows: dict[tuple[str, int, str], dict],
    old: set[str],
    found: Replay,
) -> None:
    cursor = conn.execute('SELECT * FROM "rows" ORDER BY batch_id, seq, kind')
    names = [d[0] for d in cursor.description]
    seen: set[tuple[str, int, str]] = set()
    for values in cursor:
        record = dict(zip(names, values, strict=True))
        key = (record["batch_id"], record["row"], record["kind"])
        seen.add(key)
        if key[0] in old:
            continue
        expected = rows.get(key)
        if expected is None:
            _name(found, f"{_row_name(key)} of batch {key[0]} is in the table but not in the "
                         "audit events (inserted)")  # fmt: skip
            continue
        differ = []
        for name in sorted(set(names) - IGNORED):
            want = expected.get(name)
            have = record[name]
            if have != want and not (have in (0, None) and want in (0, None)
                                     and name in ("attempts", "needs_review")):  # fmt: skip
                differ.append(f"{name} is {_show(have)} in the table, {_show(want)} in the events")
        if differ:
            _name(found, f"{_row_name(key)} of batch {key[0]} differs from its audit events: "
                         f"{'; '.join(differ)}")  # fmt: skip
    for key in sorted(set(rows) - seen):
        _name(found, f"{_row_name(key)} of batch {key[0]} is in the audit events but not in the "
                     "table (deleted)")  # fmt: skip


def _name(found: Replay, problem: str) -> None:
    found.differing += 1
    if len(found.problems) < MAX_NAMED:
        found.problems.append(problem)


def _row_name(key: tuple[str, int, str]) -> str:
    """``row 5``, or ``row 5 (tickets)`` for a ticket transfer."""
    return f"row {key[1]}" if key[2] == "conversations" else f"row {key[1]} ({key[2]})"
