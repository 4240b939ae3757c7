"""The reports: ledger rows → pandas DataFrames → Excel-safe CSV files.

The only module that knows the report columns. Every file is UTF-8 with a BOM (so Excel shows
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
from omi_batch.states import NEEDS_REVIEW, PROBLEMS, result_status, review_error

PREVIEW_COLUMNS = [
    "batch", "row", "source_email", "target_email", "conv_ids", "replace_existing_members",
    "conversations", "preview_status", "error", "warnings", "note", "approved",
]  # fmt: skip
# The cells of a preview report a person may change: everything else must still match the
# ledger when the report comes back to `approve`.
EDITABLE_COLUMNS = ("approved", "note")
# Columns an edited preview report must still have for `approve` to trust it.
REQUIRED_COLUMNS = ("batch", "row", "source_email", "target_email", "conv_ids",
                    "replace_existing_members", "approved")  # fmt: skip
TARGETS_COLUMNS = ["target_email", "sources", "conversations"]
MOVED_COLUMN = "moved"  # added to the targets report once rows were executed
RESULTS_COLUMNS = [
    "row", "source_email", "target_email", "conversations_previewed", "request_id", "status",
    "updated_records", "difference", "attempts", "submitted_at", "completed_at", "error",
    "ledger_head",
]  # fmt: skip
# ``ledger_head`` (after PRODUCT.md's columns) is the audit log's last hash when the report was
# written: `ledger verify` on a copy of the ledger must reach it, so cutting the tail shows.
RETRY_COLUMNS = ["source_email", "target_email", "replace_existing_members", "conv_ids", "note"]

RESULT_STATUSES = ("succeeded", "failed", "unconfirmed", "skipped", "preview_failed")
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
    """The preview report's word for a row's preview."""
    if row["state"] == "preview_failed":
        return "preview_failed"
    return "previewed" if row["conversations_previewed"] is not None else "planned"


def preview_frame(rows: list[dict], warnings: Iterable[dict] | None = None) -> pd.DataFrame:
    """The preview report: one line per row, with the batch it belongs to and the validation
    warnings about it (``warnings``: the batch's, as the ledger keeps them; None: no
    ``warnings`` column, for a caller that fills it itself)."""
    by_row = warnings_by_row(warnings or ())
    records = [
        {
            "batch": r["batch_id"],
            "row": r["row"],
            "source_email": r["source_email"],
            "target_email": r["target_email"],
            "conv_ids": _join(r["conv_ids"]),
            "replace_existing_members": _bool(r["replace_existing_members"]),
            "conversations": r["conversations_previewed"],
            "preview_status": preview_status(r),
            "error": r["preview_error"] or "",
            "warnings": by_row.get(r["row"], ""),
            "note": _note(r),
            "approved": "yes" if r["approved_at"] and r["state"] != "skipped" else "",
        }
        for r in rows
    ]
    frame = pd.DataFrame.from_records(records, columns=PREVIEW_COLUMNS)
    frame["conversations"] = frame["conversations"].astype("Int64")
    return frame if warnings is not None else frame.drop(columns=["warnings"])


def targets_frame(rows: list[dict], *, moved: bool = False) -> pd.DataFrame:
    """The load each target agent takes on: sources moving to it and their conversations; with
    ``moved`` (after execute), beside it what its rows' callbacks said they moved."""
    columns = TARGETS_COLUMNS + ([MOVED_COLUMN] if moved else [])
    previewed = [r for r in rows if r["conversations_previewed"] is not None]
    if not previewed:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame.from_records(
        [
            {"target_email": r["target_email"], "source_email": r["source_email"],
             "conversations": r["conversations_previewed"],
             "moved": r["updated_records"] or 0}
            for r in previewed
        ]
    )  # fmt: skip
    grouped = frame.groupby("target_email", sort=True).agg(
        sources=("source_email", lambda s: "; ".join(sorted(set(s)))),
        conversations=("conversations", "sum"),
        moved=("moved", "sum"),
    )
    grouped = grouped.reset_index().sort_values(
        ["conversations", "target_email"], ascending=[False, True], kind="stable"
    )
    return grouped[columns]


def received_by_target(rows: Iterable[dict]) -> list[tuple[str, int, int]]:
    """``(target, conversations moved to it, conversations previewed for it)`` for each target
    agent of the rows that were executed, most received first."""
    received: dict[str, list[int]] = {}
    for r in rows:
        if r["updated_records"] is None and r["state"] not in ("succeeded", "failed"):
            continue
        totals = received.setdefault(r["target_email"], [0, 0])
        totals[0] += r["updated_records"] or 0
        totals[1] += r["conversations_previewed"] or 0
    return sorted(((t, m, p) for t, (m, p) in received.items()), key=lambda x: (-x[1], x[0]))


def summary_line(batch_id: str, rows: list[dict]) -> str:
    """The end of a run in one line a manager can read: rows per outcome, conversations moved."""
    counts = {status: 0 for status in RESULT_STATUSES}
    for r in rows:
        counts[result_status(r)] += 1
    moved = sum(r["updated_records"] or 0 for r in rows)
    parts = [f"{counts['succeeded']} {'row' if counts['succeeded'] == 1 else 'rows'} succeeded",
             f"{counts['failed']} failed", f"{counts['unconfirmed']} unconfirmed",
             f"{counts['skipped']} skipped"]  # fmt: skip
    if counts["preview_failed"]:
        failed = counts["preview_failed"]
        parts.append(f"{failed} failed {'its' if failed == 1 else 'their'} preview")
    word = "conversation" if moved == 1 else "conversations"
    return f"Batch {batch_id}: {', '.join(parts)}; {moved} {word} moved."


def results_frame(rows: list[dict], head: str | None = None) -> pd.DataFrame:
    records = []
    for r in rows:
        previewed, updated = r["conversations_previewed"], r["updated_records"]
        records.append(
            {
                "row": r["row"],
                "source_email": r["source_email"],
                "target_email": r["target_email"],
                "conversations_previewed": previewed,
                "request_id": r["request_id"] or "",
                "status": result_status(r),
                "updated_records": updated,
                "difference": updated - previewed
                if updated is not None and previewed is not None
                else None,
                "attempts": r["attempts"] or 0,
                "submitted_at": r["submitted_at"] or "",
                "completed_at": r["completed_at"] or "",
                "error": _error(r),
                "ledger_head": head or "",
            }
        )
    frame = pd.DataFrame.from_records(records, columns=RESULTS_COLUMNS)
    for column in ("conversations_previewed", "updated_records", "difference"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _error(row: dict) -> str:
    """The row's error for the results report; a row flagged for review always says so."""
    text = row["error"] or row["preview_error"] or ""
    if row.get("needs_review") and not text.startswith(f"{NEEDS_REVIEW}:"):
        text = review_error(text)
    return text


def needs_retry(row: dict) -> bool:
    """Failed, unconfirmed or preview_failed, or approved but held behind such a row of its
    source (a held row has an ``error`` saying so)."""
    if row["state"] == "approved":
        return bool(row["error"])
    return result_status(row) in PROBLEMS


def retry_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows still to do (see :func:`needs_retry`), in the input format and run order."""
    records = [
        {
            "source_email": r["source_email"],
            "target_email": r["target_email"],
            "replace_existing_members": _bool(r["replace_existing_members"]),
            "conv_ids": _join(r["conv_ids"]),
            "note": f"retry of {r['batch_id']} row {r['row']} ({result_status(r)}"
            + (
                f": {r['error'] or r['preview_error']})"
                if r["error"] or r["preview_error"]
                else ")"
            ),
        }
        for r in rows
        if needs_retry(r)
    ]
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
    if column in ("row", "conversations"):
        try:
            return int(float(text)) if text else None
        except ValueError:
            return text
    if column == "conv_ids":
        return [c for c in text.replace("|", ";").replace(" ", ";").split(";") if c]
    if column in ("source_email", "target_email"):
        return text.lower()
    return text
