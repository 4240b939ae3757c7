"""The reports: ledger rows → pandas DataFrames → Excel-safe CSV files.

The only module that knows the report columns. The ledger keeps one transfer per (row, kind);
a report has one line per row of the input file, its conversations and tickets side by side. Every file is UTF-8 with a BOM (so Excel shows
Vietnamese names), and every text cell starting with = + - @ tab or CR is prefixed with ``'`` so
Excel never runs it as a formula.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from omi_batch.errors import UsageError
from omi_batch.states import (
    APPROVED,
    CONVERSATIONS,
    PROBLEMS,
    SUCCEEDED,
    TICKETS,
    result_status,
    shown_error,
)

PREVIEW_COLUMNS = [
    "batch", "row", "source_email", "target_email", "conv_ids", "replace_existing_members",
    "scope", "conversations", "tickets", "preview_status", "error", "warnings", "note",
    "approved",
]  # fmt: skip
# The cells of a preview report a person may change: everything else must still match the
# ledger when the report comes back to `approve`.
EDITABLE_COLUMNS = ("approved", "note")
TARGETS_COLUMNS = ["target_email", "sources", "conversations"]
MOVED_COLUMN = "moved"  # added to the targets report once rows were executed
RESULTS_COLUMNS = [
    "row", "source_email", "target_email", "conversations_previewed", "request_id", "status",
    "updated_records", "difference", "attempts", "submitted_at", "completed_at", "error",
    "scope", "conversations_status", "tickets_previewed", "tickets_status", "tickets_moved",
    "tickets_request_id", "tickets_error", "ledger_head",
]  # fmt: skip
# After PRODUCT.md's columns (``status``: the row's, the worst of its transfers; the others
# about its conversations) come each kind's own status and figures (issue 15), then
# ``ledger_head``: the audit log's last hash when the report was written (`ledger verify` on a
# copy of the ledger must reach it, so cutting the tail shows).
RETRY_COLUMNS = ["source_email", "target_email", "replace_existing_members", "conv_ids", "scope",
                 "note"]  # fmt: skip

RESULT_STATUSES = ("succeeded", "failed", "unconfirmed", "skipped", "preview_failed")
# A row's status is its worst transfer's: the first of these any of them has.
_WORST_FIRST = ("failed", "preview_failed", "unconfirmed", "skipped", "succeeded")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: object) -> object:
    """Neutralise a text cell Excel would read as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _join(ids: Iterable[str]) -> str:
    return ";".join(ids)


def _bool(value: object) -> str:
    return "true" if value else "false"


def _note(row: dict) -> str:
    note = row.get("note") or ""
    via = row.get("via") or []
    if via:
        chain = f"via {' → '.join(via)} (requested {row['requested_target']})"
        note = f"{note} · {chain}" if note else chain
    return note


def by_row(rows: Iterable[dict]) -> list[dict]:
    """The batch's transfers (ledger order) as one line per row of the input file: the row's
    identity and plan (source, target, conv_ids, note…), ``scope`` and ``transfers``
    ({kind: transfer}, conversations first)."""
    lines: dict[int, dict] = {}
    for transfer in rows:
        line = lines.get(transfer["row"])
        if line is None:
            line = lines[transfer["row"]] = dict(transfer, transfers={})
        line["transfers"][transfer.get("kind") or CONVERSATIONS] = transfer
    for line in lines.values():
        kinds = line["transfers"]
        line["scope"] = "both" if len(kinds) > 1 else next(iter(kinds))
    return list(lines.values())


def conversations(rows: Iterable[dict]) -> list[dict]:
    """The conversation transfers among ``rows`` (what the targets figures are about)."""
    return [r for r in rows if (r.get("kind") or CONVERSATIONS) == CONVERSATIONS]


def line_status(line: dict) -> str:
    """A line's results status: the worst of its transfers' (see RESULT_STATUSES)."""
    found = {result_status(t) for t in line["transfers"].values()}
    return next(s for s in _WORST_FIRST if s in found)


def warnings_by_row(warnings: Iterable[dict]) -> dict[int, str]:
    """The batch's validation warnings as one ``warnings`` cell per row (``code: message``)."""
    cells: dict[int, list[str]] = {}
    for warning in warnings:
        if warning.get("row") is not None:
            cells.setdefault(int(warning["row"]), []).append(
                f"{warning['code']}: {warning['message']}"
            )
    return {row: "; ".join(texts) for row, texts in cells.items()}


def preview_status(row: dict) -> str:
    """The preview report's word for a transfer's preview, or a line's (the worst of its
    transfers': preview_failed, then planned)."""
    if "transfers" in row:
        words = {preview_status(t) for t in row["transfers"].values()}
        return next(w for w in ("preview_failed", "planned", "previewed") if w in words)
    if row["state"] == "preview_failed":
        return "preview_failed"
    return "previewed" if row["conversations_previewed"] is not None else "planned"


def _count(line: dict, kind: str, column: str = "conversations_previewed") -> int | None:
    """A figure of the line's ``kind`` transfer (None: no such transfer, or no figure)."""
    transfer = line["transfers"].get(kind)
    return None if transfer is None else transfer[column]


def _errors(line: dict, column: str) -> str:
    """The line's transfers' errors in ``column``, a ticket one after ``tickets:``."""
    texts = []
    for kind, transfer in line["transfers"].items():
        text = transfer[column] or ""
        if text:
            texts.append(text if kind == CONVERSATIONS else f"{kind}: {text}")
    return "; ".join(texts)


def preview_errors(line: dict) -> str:
    """The line's preview errors, a ticket one after ``tickets:``."""
    return _errors(line, "preview_error")


def _approved(line: dict) -> bool:
    return any(t["approved_at"] and t["state"] != "skipped" for t in line["transfers"].values())


def preview_frame(rows: list[dict], warnings: Iterable[dict] | None = None) -> pd.DataFrame:
    """The preview report: one line per row, with the batch it belongs to, what it would move
    (``conversations`` and ``tickets`` side by side) and the validation warnings about it
    (``warnings``: the batch's, as the ledger keeps them; None: no ``warnings`` column, for a
    caller that fills it itself)."""
    by_warning = warnings_by_row(warnings or ())
    records = [
        {
            "batch": line["batch_id"],
            "row": line["row"],
            "source_email": line["source_email"],
            "target_email": line["target_email"],
            "conv_ids": _join(line["conv_ids"]),
            "replace_existing_members": _bool(line["replace_existing_members"]),
            "scope": line["scope"],
            "conversations": _count(line, CONVERSATIONS),
            "tickets": _count(line, TICKETS),
            "preview_status": preview_status(line),
            "error": _errors(line, "preview_error"),
            "warnings": by_warning.get(line["row"], ""),
            "note": _note(line),
            "approved": "yes" if _approved(line) else "",
        }
        for line in by_row(rows)
    ]
    frame = pd.DataFrame.from_records(records, columns=PREVIEW_COLUMNS)
    for column in ("conversations", "tickets"):
        frame[column] = frame[column].astype("Int64")
    return frame if warnings is not None else frame.drop(columns=["warnings"])


def targets_frame(rows: list[dict], *, moved: bool = False) -> pd.DataFrame:
    """The load each target agent takes on: sources moving to it and their conversations; with
    ``moved`` (after execute), beside it what its rows' callbacks said they moved."""
    columns = TARGETS_COLUMNS + ([MOVED_COLUMN] if moved else [])
    previewed = [r for r in conversations(rows) if r["conversations_previewed"] is not None]
    if not previewed:
        return pd.DataFrame(columns=columns)
    # Summed here, not with a pandas groupby: its per-group Python aggregate (the joined
    # sources) was most of the report's time for 10,000 rows.
    totals: dict[str, tuple[set[str], list[int]]] = {}
    for r in previewed:
        sources, sums = totals.setdefault(r["target_email"], (set(), [0, 0]))
        sources.add(r["source_email"])
        sums[0] += r["conversations_previewed"]
        sums[1] += r["updated_records"] or 0
    records = sorted(
        ({"target_email": target, "sources": "; ".join(sorted(sources)),
          "conversations": sums[0], "moved": sums[1]}
         for target, (sources, sums) in totals.items()),
        key=lambda record: (-record["conversations"], record["target_email"]),
    )  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)


def received_by_target(rows: Iterable[dict]) -> list[tuple[str, int, int]]:
    """``(target, conversations moved to it, conversations previewed for it)`` for each target
    agent of the rows that were executed, most received first."""
    received: dict[str, list[int]] = {}
    for r in conversations(rows):
        if r["updated_records"] is None and r["state"] not in ("succeeded", "failed"):
            continue
        totals = received.setdefault(r["target_email"], [0, 0])
        totals[0] += r["updated_records"] or 0
        totals[1] += r["conversations_previewed"] or 0
    return sorted(((t, m, p) for t, (m, p) in received.items()), key=lambda x: (-x[1], x[0]))


def summary_line(batch_id: str, rows: list[dict]) -> str:
    """The end of a run in one line a manager can read: rows per outcome (a row's status is its
    worst transfer's), conversations moved, and tickets moved when any row moves tickets."""
    counts = {status: 0 for status in RESULT_STATUSES}
    for line in by_row(rows):
        counts[line_status(line)] += 1
    moved = sum(r["updated_records"] or 0 for r in conversations(rows))
    tickets = [r for r in rows if r.get("kind") == TICKETS]
    parts = [f"{counts['succeeded']} {'row' if counts['succeeded'] == 1 else 'rows'} succeeded",
             f"{counts['failed']} failed", f"{counts['unconfirmed']} unconfirmed",
             f"{counts['skipped']} skipped"]  # fmt: skip
    if counts["preview_failed"]:
        failed = counts["preview_failed"]
        parts.append(f"{failed} failed {'its' if failed == 1 else 'their'} preview")
    word = "conversation" if moved == 1 else "conversations"
    if not tickets:
        return f"Batch {batch_id}: {', '.join(parts)}; {moved} {word} moved.{_caveats(rows)}"
    count = sum(r["updated_records"] or 0 for r in tickets)
    what = f"{moved} {word} and {count} {'ticket' if count == 1 else 'tickets'}"
    return f"Batch {batch_id}: {', '.join(parts)}; {what} moved.{_caveats(rows)}"


def _caveats(rows: list[dict]) -> str:
    """What the summary's figures cannot say: rows verified by a preview or confirmed by a
    callback without a count (how much they moved is not known, so it is not in the sum) and
    rows a person must review (what for is in the results report's error)."""
    unknown = [r for r in rows if r["state"] == SUCCEEDED and r["updated_records"] is None]
    verified = {r["row"] for r in unknown if r.get("verified_by") == "preview"}
    uncounted = {r["row"] for r in unknown} - verified  # a SUCCESS callback without a count
    review = {r["row"] for r in rows if r.get("needs_review")}
    said = [
        (verified, "row verified by preview: what it moved is not known, so not counted",
         "rows verified by preview: what they moved is not known, so not counted"),
        (uncounted, "row confirmed by a callback without a count: what it moved is not counted",
         "rows confirmed by a callback without a count: what they moved is not counted"),
        (review, "row needs review: see the results report's error",
         "rows need review: see the results report's error"),
    ]  # fmt: skip
    return "".join(f" {len(found)} {one if len(found) == 1 else many}."
                   for found, one, many in said if found)  # fmt: skip


def results_frame(rows: list[dict], head: str | None = None) -> pd.DataFrame:
    """The results report: one line per row; ``status`` is the row's (its worst transfer's),
    the PRODUCT.md figures are its conversations', then each kind's own status and figures."""
    records = []
    for line in by_row(rows):
        conv, tick = line["transfers"].get(CONVERSATIONS), line["transfers"].get(TICKETS)
        first = conv or tick
        previewed = _count(line, CONVERSATIONS)
        updated = _count(line, CONVERSATIONS, "updated_records")
        records.append(
            {
                "row": line["row"],
                "source_email": line["source_email"],
                "target_email": line["target_email"],
                "conversations_previewed": previewed,
                "request_id": (conv["request_id"] if conv else None) or "",
                "status": line_status(line),
                "updated_records": updated,
                "difference": updated - previewed
                if updated is not None and previewed is not None
                else None,
                "attempts": sum(t["attempts"] or 0 for t in line["transfers"].values()),
                "submitted_at": first["submitted_at"] or "",
                "completed_at": first["completed_at"] or "",
                "error": _error(conv) if conv else "",
                "scope": line["scope"],
                "conversations_status": result_status(conv) if conv else "",
                "tickets_previewed": _count(line, TICKETS),
                "tickets_status": result_status(tick) if tick else "",
                "tickets_moved": _count(line, TICKETS, "updated_records"),
                "tickets_request_id": (tick["request_id"] if tick else None) or "",
                "tickets_error": _error(tick) if tick else "",
                "ledger_head": head or "",
            }
        )
    frame = pd.DataFrame.from_records(records, columns=RESULTS_COLUMNS)
    for column in ("conversations_previewed", "updated_records", "difference",
                   "tickets_previewed", "tickets_moved"):  # fmt: skip
        frame[column] = frame[column].astype("Int64")
    return frame


# The results report's word for an approved transfer nothing has sent yet ("skipped" alone
# would read as left out on purpose): a run stopped before it, or execute not run yet.
NOT_SENT = "approved, not sent yet: omi-batch execute {batch} sends it"


def _error(row: dict) -> str:
    """The transfer's error for the results report; one flagged for review always says so,
    an approved one nothing sent yet says that (:data:`NOT_SENT`)."""
    text = shown_error(row)
    if not text and row["state"] == APPROVED:
        text = NOT_SENT.format(batch=row["batch_id"])
    return text


def needs_retry(row: dict) -> bool:
    """Failed, unconfirmed or preview_failed, or approved but held behind such a row of its
    source (a held row has an ``error`` saying so)."""
    if row["state"] == "approved":
        return bool(row["error"])
    return result_status(row) in PROBLEMS


def retry_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows still to do (see :func:`needs_retry`), in the input format and run order; a
    row's ``scope`` names the kinds still to do (its conversations may be done, its tickets
    not)."""
    records = []
    for line in by_row(rows):
        due = {k: t for k, t in line["transfers"].items() if needs_retry(t)}
        if not due:
            continue
        why = "; ".join(
            ("" if kind == CONVERSATIONS or len(line["transfers"]) == 1 else f"{kind} ")
            + result_status(t)
            + (f": {t['error'] or t['preview_error']}" if t["error"] or t["preview_error"] else "")
            for kind, t in due.items()
        )
        records.append(
            {
                "source_email": line["source_email"],
                "target_email": line["target_email"],
                "replace_existing_members": _bool(line["replace_existing_members"]),
                "conv_ids": _join(line["conv_ids"]) if CONVERSATIONS in due else "",
                "scope": "both" if len(due) > 1 else next(iter(due)),
                "note": f"retry of {line['batch_id']} row {line['row']} ({why})",
            }
        )
    return pd.DataFrame.from_records(records, columns=RETRY_COLUMNS)


def render_csv(frame: pd.DataFrame) -> bytes:
    """``frame`` as the bytes of an Excel-safe CSV file (BOM, CRLF, escaped formulas)."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(escape_cell)
    text = safe.to_csv(index=False, lineterminator="\r\n")
    return "\ufeff".encode() + text.encode("utf-8")


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` Excel-safe (see :func:`render_csv`), atomically (temp file + rename)."""
    return _write_bytes(render_csv(frame), path)


def _write_bytes(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report_path(reports_dir: str | Path, batch_id: str, kind: str) -> Path:
    return Path(reports_dir) / f"{batch_id}-{kind}.csv"


def free_report_path(path: Path) -> Path:
    """``<batch>-preview-2.csv``, ``-3`` …: the first name beside ``path`` not taken yet."""
    for number in range(2, 10_000):
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise UsageError(f"too many preview reports beside {path}")


def write_preview_reports(
    rows: list[dict],
    batch_id: str,
    reports_dir: str | Path,
    warnings: Iterable[dict] = (),
    *,
    replace: bool | list[dict] = False,
) -> dict:
    """The preview report and the targets report.

    A preview report a person may have edited is never overwritten: an existing one is left as
    it is, unless ``replace`` is True (a folder only the program writes, as a job's) or is the
    rows as they were when it was written and the file still holds exactly that (nobody edited
    it). Otherwise the new report gets a new name (``<batch>-preview-2.csv``); ``replace`` False
    keeps the existing one and writes nothing new."""
    warnings = list(warnings)
    path = report_path(reports_dir, batch_id, "preview")
    data = render_csv(preview_frame(rows, warnings))
    if path.exists() and replace is not True:
        before = None if replace is False else render_csv(preview_frame(replace, warnings))
        if before is None:
            data = None
        elif path.read_bytes() != before:
            path = free_report_path(path)
    if data is not None:
        _write_bytes(data, path)
    return {
        "preview": path,
        "targets": write_csv(targets_frame(rows), report_path(reports_dir, batch_id, "targets")),
    }


def write_result_reports(
    rows: list[dict], batch_id: str, reports_dir: str | Path, head: str | None = None
) -> dict:
    """The targets report with what each target received, the results report and the retry
    report (written even when empty, so a job can tell)."""
    results = results_frame(rows, head)
    return {
        "targets": write_csv(
            targets_frame(rows, moved=True), report_path(reports_dir, batch_id, "targets")
        ),  # fmt: skip
        "results": write_csv(results, report_path(reports_dir, batch_id, "results")),
        "retry": write_csv(retry_frame(rows), report_path(reports_dir, batch_id, "retry")),
    }


# --------------------------------------------------------------------------- reading approvals


def read_approvals(path: str | Path) -> list[dict]:
    """Read a preview report a person edited (see :func:`omi_batch.tables.read_approvals`: the
    one reader of table files, so `approve` reads what `validate` reads)."""
    from omi_batch import tables

    return tables.read_approvals(path)


def expected_cells(rows: list[dict], warnings: Iterable[dict] = ()) -> dict[int, dict[str, str]]:
    """The cells the preview report has for each row, as text before escaping: what an edited
    report is compared with."""
    frame = preview_frame(rows, warnings)
    return {
        int(record["row"]): {c: "" if pd.isna(v) else str(v) for c, v in record.items()}
        for record in frame.to_dict("records")
    }


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False,
             "": False}  # fmt: skip


def changed_cells(cells: dict[str, str], expected: dict[str, str]) -> list[tuple[str, str, str]]:
    """``[(column, in the report, in the ledger)]`` for each cell of an edited report line that
    no longer says what ``expected`` (see :func:`expected_cells`) says, ``approved`` and
    ``note`` aside. Compared as Excel may have re-saved them: trimmed, booleans and emails in
    any case, numbers as numbers."""
    changed = []
    for column, theirs in cells.items():
        if column in EDITABLE_COLUMNS or column not in expected:
            continue
        ours = expected[column]
        if _normal(column, theirs) != _normal(column, ours):
            changed.append((column, theirs, ours))
    return changed


def _normal(column: str, text: str) -> object:
    text = " ".join(text.split())
    if column == "replace_existing_members":
        return _BOOLEANS.get(text.lower(), text)
    if column in ("row", "conversations", "tickets"):
        try:
            return int(float(text)) if text else None
        except ValueError:
            return text
    if column == "conv_ids":
        return [c for c in text.replace("|", ";").replace(" ", ";").split(";") if c]
    if column in ("source_email", "target_email", "scope"):
        return text.lower()
    return text
