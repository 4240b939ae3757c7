"""The frames the workbooks show: the CSV reports' frames, completed where a workbook says more."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omi_batch import reports

REVIEW_COLUMNS = list(reports.PREVIEW_COLUMNS)
APPROVABLE_STATES = ("previewed", "approved", "skipped")  # the states `approve` accepts


def review_frame(
    rows: list[dict], batch_id: str, warnings_by_row: Mapping[int, Sequence[str]] | None = None
) -> Any:
    """The preview report's frame in REVIEW_COLUMNS order, with ``batch`` and ``warnings``
    filled in where the CSV frame does not have them (yet)."""
    frame = reports.preview_frame(rows)
    if "batch" not in frame.columns:
        frame.insert(0, "batch", batch_id)
    if "warnings" not in frame.columns:
        by_row = warnings_by_row or {}
        frame["warnings"] = ["; ".join(by_row.get(int(n), ())) for n in frame["row"]]
    return frame[REVIEW_COLUMNS]


def warnings_by_row(batch_info: Mapping[str, Any]) -> dict[int, list[str]]:
    """The plan's warnings (kept in the batch) by row; those of no row are under ``0``."""
    found: dict[int, list[str]] = {}
    for warning in batch_info.get("warnings") or []:
        text = f"{warning.get('code')}: {warning.get('message')}"
        found.setdefault(warning.get("row") or 0, []).append(text)
    return found


def moved_by_target(rows: Iterable[dict]) -> dict[str, int]:
    """Conversations OMI confirmed moved, per target (succeeded rows' ``updated_records``)."""
    moved: dict[str, int] = {}
    for row in reports.conversations(rows):
        if row["state"] == "succeeded" and row["updated_records"] is not None:
            moved[row["target_email"]] = moved.get(row["target_email"], 0) + row["updated_records"]
    return moved


def tickets_fact(
    rows: list[dict], column: str, names: tuple[str, str]
) -> list[tuple[str, str, Any]]:
    """The About sheet's ticket figure (the sum of ``column`` over the ticket transfers), when
    the batch moves tickets at all."""
    tickets = [r for r in rows if r.get("kind") == "tickets"]
    if not tickets:
        return []
    return [(*names, sum(r[column] or 0 for r in tickets))]
