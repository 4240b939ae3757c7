"""Approval rules: what a preview report may change, and the catch-all rows that must not run
while a ``conv_ids`` row of their source does not."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omi_batch import reports
from omi_batch.errors import InputError, UsageError
from omi_batch.states import (
    APPROVABLE,
    APPROVED,
    CONVERSATIONS,
    DECIDED,
    FAILED,
    PLANNED,
    PREVIEW_FAILED,
    PREVIEWED,
    SKIPPED,
    TICKETS,
    covers,
)


def approval_lines(transfers: Iterable[dict]) -> dict[int, dict]:
    """The batch's transfers as the lines a person approves, ``{row: line}`` (see
    ``reports.by_row``), each with one ``state`` for the approval rules: previewed, approved
    or skipped when any of its transfers is (in that order), else preview_failed when one
    failed its preview, else the first one not planned (decided), else planned;
    ``preview_error`` names the kind of a ticket transfer's."""
    lines = {}
    for line in reports.by_row(transfers):
        states = [t["state"] for t in line["transfers"].values()]
        line["state"] = next(
            (s for s in (PREVIEWED, APPROVED, SKIPPED, PREVIEW_FAILED) if s in states),
            next((s for s in states if s != PLANNED), PLANNED),
        )
        line["preview_error"] = reports.preview_errors(line)
        lines[line["row"]] = line
    return lines


def approvals_from_report(
    batch_id: str, rows: dict[int, dict], path: Path, warnings: list, notes: list[str]
) -> tuple[list[int], list[int]]:
    """(approved rows, skipped rows) that the preview report at ``path`` asks for, checked
    against the ledger's ``rows`` and the batch's ``warnings``: UsageError (nothing approved)
    when a column the report was written with is missing (see :func:`written_columns`),
    InputError when a cell other than approved/note changed or a row cannot be approved;
    ``notes`` gets a line for every row left as it was."""
    entries = reports.read_approvals(path)
    transfers = [t for line in rows.values() for t in line.get("transfers", {0: line}).values()]
    expected = reports.expected_cells(transfers, warnings)
    given = set(entries[0]["cells"]) if entries else set()
    missing = [c for c in written_columns(transfers, expected, given) if entries and c not in given]
    if missing:
        raise UsageError(f"{path.name} has no column {', '.join(missing)}: the preview report of "
                         f"batch {batch_id} was written with {_them(missing)}, and approve takes "
                         "a report only with every column it was written with (it records only "
                         "the approved and note cells); nothing was approved")  # fmt: skip
    named = {e["cells"].get("batch", "") for e in entries}
    others = sorted(named - {batch_id, ""})
    if others:
        raise UsageError(f"{path.name} is the preview report of batch {', '.join(others)}, "
                         f"not of batch {batch_id}: nothing was approved")  # fmt: skip
    if entries and named == {""}:
        raise UsageError(f"{path.name} names no batch in its batch column: nothing was "
                         f"approved (the preview report of batch {batch_id} names it)")  # fmt: skip
    mismatches: list[str] = []
    refusals: list[str] = []
    chosen: list[int] = []
    skipped: list[int] = []
    seen: set[int] = set()
    for entry in entries:
        number = entry["row"]
        row = rows.get(number)
        if row is None:
            mismatches.append(f"row {number}: not in batch {batch_id} (rows were added)")
            continue
        if number in seen:
            mismatches.append(f"row {number}: in the report twice")
            continue
        seen.add(number)
        changed = reports.changed_cells(entry["cells"], expected[number])
        if changed:
            column, theirs, ours = changed[0]
            mismatches.append(f"row {number}: {column} is {theirs!r} in the report but "
                              f"{ours!r} in the ledger: approve records only the approved "
                              "and note columns")  # fmt: skip
            continue
        state = row["state"]
        if state in DECIDED:  # past approval: neither approved nor skipped again
            notes.append(f"row {number} is already {state}: left as it is")
        elif not entry["approved"]:
            if state in APPROVABLE:
                skipped.append(number)
        elif state == PREVIEW_FAILED:
            refusals.append(f"row {number} failed its preview ({row['preview_error']}), so "
                            f"it cannot be approved: clear row {number}'s approved cell")  # fmt: skip
        elif state not in APPROVABLE:
            refusals.append(f"row {number} is {state}: only previewed rows can be approved; "
                            f"clear row {number}'s approved cell")  # fmt: skip
        else:
            chosen.append(number)
    if not mismatches:  # a mismatched row is not approved: that alone would refuse more
        for catch_all, blocker in uncovered_catch_alls(rows.values(), chosen, skipped):
            refusals.append(_uncovered(catch_all, blocker, batch_id))
    if mismatches or refusals:
        header = (f"{path.name} no longer matches batch {batch_id}" if mismatches
                  else f"{path.name} cannot be approved as it is")  # fmt: skip
        raise InputError(f"{header}: nothing was approved", mismatches + refusals)
    missing = [n for n, r in rows.items() if n not in seen and r["state"] in APPROVABLE]
    left = [n for n in missing if rows[n]["state"] != APPROVED]
    if left:
        notes.append(f"{_plural(len(left), 'row')} not in the report: "
                     f"{', '.join(map(str, left))} (not approved)")  # fmt: skip
    kept = [n for n in missing if rows[n]["state"] == APPROVED]
    if kept:
        notes.append(f"{_plural(len(kept), 'row')} not in the report but approved before: "
                     f"{', '.join(map(str, kept))} (left approved)")  # fmt: skip
    return chosen, skipped


# The columns the preview report had before it showed tickets (#15): a batch of that time could
# not move tickets, so for a batch without a ticket transfer a report lacking both is an older
# omi-batch's, not an edited one.
_TICKET_COLUMNS = ("scope", "tickets")


def written_columns(
    transfers: Iterable[dict], expected: dict[int, dict[str, str]], given: Iterable[str] = ()
) -> list[str]:
    """The columns the batch's preview report was written with: every column of the preview
    report (``expected``, see ``reports.expected_cells``), less ``scope`` and ``tickets`` when the
    batch moves no tickets and ``given`` (the returned report's columns) has neither, as the
    report of an omi-batch from before tickets had."""
    columns = list(next(iter(expected.values()), {})) or list(reports.PREVIEW_COLUMNS)
    given = set(given)
    moves_tickets = any((t.get("kind") or CONVERSATIONS) == TICKETS for t in transfers)
    if not moves_tickets and not given.intersection(_TICKET_COLUMNS):
        columns = [c for c in columns if c not in _TICKET_COLUMNS]
    return columns


def broken_chains(
    rows: dict[int, dict], chosen: Iterable[int], skipped: Iterable[int] = ()
) -> list[str]:
    """A line for each agent an approved row is sent on through (A → B while B leaves too, so
    A's conversations go to B's target) whose own catch-all row will not run (not approved,
    or ``skipped`` now): B may stay, yet the rows move the conversations past B. Told, not
    refused (B may leave in a later batch); the fix is named. One line per such link row,
    naming the rows sent through it."""
    after = {n: line["state"] for n, line in rows.items()}
    after.update(dict.fromkeys(chosen, APPROVED))
    after.update(dict.fromkeys(skipped, SKIPPED))
    links: dict[str, int] = {}  # the agent's own catch-all row: the one a chain goes through
    for number, line in sorted(rows.items()):
        if not line.get("conv_ids") and CONVERSATIONS in line.get("transfers", {CONVERSATIONS: 0}):
            links.setdefault(line["source_email"], number)
    through: dict[tuple[str, int], list[int]] = {}
    for number in sorted(set(chosen)):
        for agent in rows[number].get("via") or []:
            link = links.get(agent)
            if link is not None and link != number and after[link] not in (APPROVED, *DECIDED):
                through.setdefault((agent, link), []).append(number)
    said = []
    for (agent, link), numbers in through.items():
        target = rows[numbers[0]]["target_email"]
        sent = _rows_named(numbers)
        verb = "goes" if len(numbers) == 1 else "go"
        said.append(f"Warning: {sent} {verb} to {target} via {agent}, who leaves too in row "
                    f"{link}, but row {link} is not approved: if {agent} stays, the "
                    f"conversations still go to {target}; approve row {link} too, or move "
                    f"{sent} to a new file with {agent} as the target")  # fmt: skip
    return said


def _rows_named(numbers: list[int]) -> str:
    """``row 2``, ``rows 2 and 3``, ``rows 2, 3, 4 and 2 more``: a short list of rows."""
    numbers = sorted(set(numbers))
    if len(numbers) == 1:
        return f"row {numbers[0]}"
    if len(numbers) <= 4:
        return f"rows {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}"
    return f"rows {', '.join(map(str, numbers[:3]))} and {len(numbers) - 3} more"


def uncovered_catch_alls(
    rows: Iterable[dict], chosen: Iterable[int] = (), skipped: Iterable[int] = ()
) -> list[tuple[dict, dict]]:
    """``(catch-all row, conv_ids row)`` pairs where the catch-all row would be approved (with
    ``chosen`` approved and ``skipped`` skipped) while a ``conv_ids`` row of the same source
    would not run: OMI cannot leave conversations out of a transfer, so the catch-all row
    would move them to its own target."""
    rows = list(rows)
    after = {r["row"]: r["state"] for r in rows}
    after.update(dict.fromkeys(chosen, APPROVED))
    after.update(dict.fromkeys(skipped, SKIPPED))
    chosen_by_source: dict[str, list[dict]] = {}  # the conv_ids rows of each source, in order
    for row in rows:
        if row["conv_ids"]:
            chosen_by_source.setdefault(row["source_email"], []).append(row)
    found = []
    for catch_all in rows:
        if catch_all["conv_ids"] or after[catch_all["row"]] != APPROVED:
            continue
        if (catch_all.get("kind") or CONVERSATIONS) != CONVERSATIONS:
            continue  # a row that moves only tickets takes no conversations
        for other in chosen_by_source.get(catch_all["source_email"], ()):
            if not covers(after[other["row"]]):
                found.append((catch_all, dict(other, state=after[other["row"]])))
    return found


def why_not(row: dict) -> str:
    return {PREVIEW_FAILED: "failed its preview", FAILED: "failed"}.get(
        row["state"], "is not approved"
    )


def _uncovered(catch_all: dict, blocker: dict, batch_id: str) -> str:
    """Why approving ``catch_all`` is refused while ``blocker`` would not run, and the fix."""
    n, b = catch_all["row"], blocker["row"]
    count = len(blocker["conv_ids"])
    what = _plural(count, "conversation")
    if blocker["state"] == PREVIEW_FAILED:
        fix = f"fix row {b} and preview it again (omi-batch preview --batch {batch_id}), or clear row {n}"
        why = "failed its preview"
    elif blocker["state"] == FAILED:
        fix = f"run row {b} again first, or clear row {n}"
        why = "failed"
    else:
        fix = f"approve row {b} too, or clear row {n}"
        why = "is not"
    return (f"row {n} ({catch_all['source_email']} → {catch_all['target_email']}, all the other "
            f"conversations) is approved but row {b} of the same source ({what} to "
            f"{blocker['target_email']}) {why}: OMI cannot leave conversations out of a "
            f"transfer, so row {n} would move those {what} to {catch_all['target_email']} too; "
            f"{fix}")  # fmt: skip


def _them(columns: list[str]) -> str:
    return "it" if len(columns) == 1 else "them"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
