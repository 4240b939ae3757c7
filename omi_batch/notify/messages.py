"""The notifications' texts: what a review waiting, a finished batch, rows or a file needing a
person say (plain text, one line a fact, every message ending with the file or command to use)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("review_waiting", "batch_finished", "needs_attention")
MAX_LISTED = 20  # targets or errors listed in one message at most


@dataclass(frozen=True)
class Message:
    """One notification: what it is about, its title and text, and a file to attach."""

    kind: str
    title: str
    body: str
    batch: str | None = None
    attach: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")


def _listed(lines: list[str], limit: int = MAX_LISTED) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  … and {len(lines) - limit} more"]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _message(
    kind: str,
    title: str,
    lines: list[str],
    tail: Mapping[str, object] | None = None,
    *,
    batch: str | None = None,
    attach: str | None = None,
) -> Message:
    """A message whose body is ``lines`` then a ``label: value`` line for each value of
    ``tail`` that is set (the one way every message ends: a file or a command to use)."""
    ending = [f"{label}: {value}" for label, value in (tail or {}).items() if value]
    return Message(kind=kind, title=f"omi-batch: {title}", body="\n".join([*lines, *ending]),
                   batch=batch, attach=attach)  # fmt: skip


def review_waiting(
    batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    file: str | None = None,
    workbook: str | os.PathLike | None = None,
    approve_command: str | None = None,
    job: str | None = None,
) -> Message:
    """The review-waiting message: the batch, its file, rows, conversations and target load, the workbook
    (attached where the service takes attachments) and the command that approves it."""
    previewed = [r for r in rows if r.get("conversations_previewed") is not None]
    failed = sum(r.get("state") == "preview_failed" for r in rows)
    conversations = sum(int(r["conversations_previewed"]) for r in previewed)
    load: dict[str, list] = {}
    for row in previewed:
        entry = load.setdefault(str(row["target_email"]), [0, set()])
        entry[0] += int(row["conversations_previewed"])
        entry[1].add(row.get("source_email"))
    ranked = sorted(load.items(), key=lambda item: (-item[1][0], item[0]))
    command = approve_command or f"omi-batch approve {batch_id} --report FILE"
    of_job = f" (job {job})" if job else ""
    lines = [
        f"Batch {batch_id}{of_job} is waiting for review.",
        *([f"File: {file}"] if file else []),
        f"Rows: {len(rows)} ({len(previewed)} previewed, {failed} failed their preview)",
        f"Conversations to move: {conversations}",
        f"Targets: {_plural(len(load), 'agent')}",
        *_listed(
            [
                f"  {target}: {_plural(n, 'conversation')} from {_plural(len(s), 'source')}"
                for target, (n, s) in ranked
            ]
        ),  # fmt: skip
    ]
    return _message("review_waiting", f"batch {batch_id} is waiting for review", lines,
                    {"Review workbook": workbook, "Approve": command}, batch=batch_id,
                    attach=str(workbook) if workbook else None)  # fmt: skip


def batch_finished(
    batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    summary: str | None = None,
    job: str | None = None,
) -> Message:
    """The batch-finished message: the summary line (counts per status) and the totals per target."""
    from omi_batch.states import result_status

    statuses = Counter(result_status(dict(r)) for r in rows)
    line = summary or ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "no rows"
    totals: dict[str, dict[str, int]] = {}
    by_row: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}  # a row's transfers (issue 15)
    for row in rows:
        by_row.setdefault((str(row["target_email"]), row["row"]), []).append(row)
    for (target, _), transfers in by_row.items():
        entry = totals.setdefault(target, {"rows": 0, "succeeded": 0, "moved": 0, "tickets": 0})
        entry["rows"] += 1
        entry["succeeded"] += all(result_status(dict(t)) == "succeeded" for t in transfers)
        for transfer in transfers:
            kind = "tickets" if transfer.get("kind") == "tickets" else "moved"
            entry[kind] += int(transfer.get("updated_records") or 0)
    tickets = any(row.get("kind") == "tickets" for row in rows)
    of_job = f" (job {job})" if job else ""
    lines = [
        f"Batch {batch_id}{of_job} finished: {line}.",
        "Per target:",
        *_listed(
            [
                f"  {target}: {t['succeeded']} of {_plural(t['rows'], 'row')} succeeded, "
                f"{_plural(t['moved'], 'conversation')}"
                + (f" and {_plural(t['tickets'], 'ticket')}" if tickets else "")
                + " moved"
                for target, t in sorted(totals.items())
            ]
        ),  # fmt: skip
    ]
    return _message("batch_finished", f"batch {batch_id} finished: {line}", lines, batch=batch_id)


def rows_need_attention(
    batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    retry_report: str | os.PathLike | None = None,
    job: str | None = None,
) -> Message | None:
    """The needs-attention message of a batch with rows that failed, stayed unconfirmed or
    failed their preview (None when it has none), listing the first of them with their errors."""
    from omi_batch.states import PROBLEMS, result_status

    bad = [r for r in rows if result_status(dict(r)) in PROBLEMS]
    if not bad:
        return None
    counts = Counter(result_status(dict(r)) for r in bad)
    what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    of_job = f" (job {job})" if job else ""
    lines = [
        f"Batch {batch_id}{of_job}: {what}.",
        *_listed(
            [
                f"  row {r['row']} {r['source_email']} -> {r['target_email']}: "
                f"{result_status(dict(r))}" + (f": {why}" if (why := _why(r)) else "")
                for r in bad
            ],
            limit=5,
        ),  # fmt: skip
    ]
    return _message("needs_attention", f"batch {batch_id} needs attention: {what}", lines,
                    {"Retry report": retry_report}, batch=batch_id)  # fmt: skip


def _why(row: Mapping[str, Any]) -> str:
    """A row's error, or its preview's error (what the results report shows)."""
    return str(row.get("error") or row.get("preview_error") or "")


def file_rejected(
    file: str,
    error: str,
    problems: Sequence[Any] = (),
    *,
    errors_report: str | os.PathLike | None = None,
    job: str | None = None,
) -> Message:
    """The needs-attention message of a rejected input file, with its first errors."""
    listed = []
    for problem in problems:
        row = getattr(problem, "row", None)
        text = getattr(problem, "message", str(problem))
        listed.append(f"  {'row ' + str(row) + ': ' if row is not None else ''}{text}")
    of_job = f" by job {job}" if job else ""
    lines = [f"File {file} was rejected{of_job}: {error}", *_listed(listed, limit=5)]
    return _message("needs_attention", f"file {file} was rejected", lines,
                    {"Every error": errors_report})  # fmt: skip
