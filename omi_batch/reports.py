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

from omi_batch.states import NEEDS_REVIEW, PROBLEMS, result_status, review_error

PREVIEW_COLUMNS = [
    "row", "source_email", "target_email", "conv_ids", "replace_existing_members",
    "conversations", "preview_status", "error", "note", "approved",
]  # fmt: skip
TARGETS_COLUMNS = ["target_email", "sources", "conversations"]
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


def preview_frame(rows: list[dict]) -> pd.DataFrame:
    records = [
        {
            "row": r["row"],
            "source_email": r["source_email"],
            "target_email": r["target_email"],
            "conv_ids": _join(r["conv_ids"]),
            "replace_existing_members": _bool(r["replace_existing_members"]),
            "conversations": r["conversations_previewed"],
            "preview_status": "preview_failed"
            if r["state"] == "preview_failed"
            else ("previewed" if r["conversations_previewed"] is not None else "planned"),
            "error": r["preview_error"] or "",
            "note": _note(r),
            "approved": "yes" if r["approved_at"] and r["state"] != "skipped" else "",
        }
        for r in rows
    ]
    frame = pd.DataFrame.from_records(records, columns=PREVIEW_COLUMNS)
    frame["conversations"] = frame["conversations"].astype("Int64")
    return frame


def targets_frame(rows: list[dict]) -> pd.DataFrame:
    """The load each target agent takes on: sources moving to it and their conversations."""
    previewed = [r for r in rows if r["conversations_previewed"] is not None]
    if not previewed:
        return pd.DataFrame(columns=TARGETS_COLUMNS)
    frame = pd.DataFrame.from_records(
        [
            {"target_email": r["target_email"], "source_email": r["source_email"],
             "conversations": r["conversations_previewed"]}
            for r in previewed
        ]
    )  # fmt: skip
    grouped = frame.groupby("target_email", sort=True).agg(
        sources=("source_email", lambda s: "; ".join(sorted(set(s)))),
        conversations=("conversations", "sum"),
    )
    grouped = grouped.reset_index().sort_values(
        ["conversations", "target_email"], ascending=[False, True], kind="stable"
    )
    return grouped[TARGETS_COLUMNS]


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


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` Excel-safe (BOM, escaped formulas), atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(escape_cell)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as handle:
            safe.to_csv(handle, index=False, lineterminator="\r\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report_path(reports_dir: str | Path, batch_id: str, kind: str) -> Path:
    return Path(reports_dir) / f"{batch_id}-{kind}.csv"


def write_preview_reports(rows: list[dict], batch_id: str, reports_dir: str | Path) -> dict:
    """The preview report and the targets report."""
    return {
        "preview": write_csv(preview_frame(rows), report_path(reports_dir, batch_id, "preview")),
        "targets": write_csv(targets_frame(rows), report_path(reports_dir, batch_id, "targets")),
    }


def write_result_reports(
    rows: list[dict], batch_id: str, reports_dir: str | Path, head: str | None = None
) -> dict:
    """The results report and the retry report (written even when empty, so a job can tell)."""
    results = results_frame(rows, head)
    return {
        "results": write_csv(results, report_path(reports_dir, batch_id, "results")),
        "retry": write_csv(retry_frame(rows), report_path(reports_dir, batch_id, "retry")),
    }


# --------------------------------------------------------------------------- reading approvals


def read_approvals(path: str | Path) -> list[dict]:
    """Read a preview report a person edited (see :func:`omi_batch.tables.read_approvals`: the
    one reader of table files, so `approve` reads what `validate` reads)."""
    from omi_batch import tables

    return tables.read_approvals(path)
