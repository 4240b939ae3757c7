"""The review workbook: the preview report as reviewers read and approve it (``approved`` the
one editable column, a yes/no dropdown; every other cell locked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from omi_batch import reports
from omi_batch.workbook import frames, sheets
from omi_batch.workbook.texts import HEADER_NOTES, REVIEW_STEPS, steps

REVIEW_SHEET = "Review"


def write_review_workbook(
    rows: list[dict],
    batch_info: Mapping[str, Any],
    path: str | Path,
    *,
    warnings_by_row: Mapping[int, Sequence[str]] | None = None,
    max_age_hours: float = 24,
) -> Path:
    """Write ``<batch>-review.xlsx``: sheets Review (``approved`` the one editable column),
    Targets (the load per target agent) and About (what to do, in Vietnamese then English)."""
    batch_id = batch_info["id"]
    by_row = warnings_by_row if warnings_by_row is not None else frames.warnings_by_row(batch_info)
    frame = frames.review_frame(rows, batch_id, by_row)
    lines = reports.by_row(rows)  # the frame's lines, in its order
    failed = [reports.preview_status(line) == "preview_failed" for line in lines]
    approvable = frames.APPROVABLE_STATES
    can_approve = [
        any(t["state"] in approvable for t in line["transfers"].values()) for line in lines
    ]
    path = Path(path)
    book = sheets.Book()
    review = book.sheet(REVIEW_SHEET)

    def style(index: int, column: str) -> tuple[str | None, bool]:
        fill = sheets.FAILED_FILL if failed[index] else None
        editable = column == "approved" and can_approve[index]
        if editable and fill is None:
            fill = sheets.APPROVE_FILL
        return fill, editable

    def comment(index: int, column: str) -> str | None:
        if column == "approved" and failed[index]:
            reason = reports.preview_errors(lines[index]) or "preview failed"
            return f"Không thể duyệt: {reason}\nCannot be approved: {reason}"
        return None

    sheets.table(review, frame, HEADER_NOTES, style=style, comment=comment)
    if any(can_approve):
        column = frames.REVIEW_COLUMNS.index("approved") + 1
        sheets.approved_dropdown(review, column, len(lines) + 1)
    sheets.targets_sheet(book, rows, with_moved=False)
    planned = {r["row"] for r in rows}
    loose = [text for n, items in by_row.items() if n not in planned for text in items]
    sheets.about_sheet(
        book,
        title=("Duyệt lô chuyển hội thoại", "Review of a conversation transfer batch"),
        steps=steps(REVIEW_STEPS, hours=max_age_hours),
        facts=_facts(batch_info, rows, path.name, max_age_hours),
        notes=loose,
    )
    return book.save(path)


def _facts(
    batch_info: Mapping[str, Any], rows: list[dict], name: str, max_age_hours: float
) -> list[tuple[str, str, Any]]:
    lines = len(reports.by_row(rows))
    previewed = [r for r in reports.conversations(rows) if r["conversations_previewed"] is not None]
    times = [r["previewed_at"] for r in rows if r.get("previewed_at")]
    deadline = ""
    if times:
        try:
            oldest = datetime.fromisoformat(min(times))
            deadline = _iso(oldest + timedelta(hours=max_age_hours))
        except ValueError:
            deadline = ""
    failed = len({r["row"] for r in rows if r["state"] == "preview_failed"})
    return [
        ("Mã lô", "Batch", batch_info["id"]),
        ("Tạo lúc", "Created at", batch_info.get("created_at") or ""),
        ("Tệp nguồn", "Source file", batch_info.get("source_file") or ""),
        ("Số dòng", "Rows", lines),
        ("Dòng lỗi xem trước", "Rows that failed their preview", failed),
        ("Hội thoại sẽ chuyển", "Conversations to move",
         sum(r["conversations_previewed"] for r in previewed)),
        *frames.tickets_fact(rows, "conversations_previewed", ("Ticket sẽ chuyển", "Tickets to move")),
        ("Nhân viên nhận", "Target agents", len({r["target_email"] for r in previewed})),
        ("Thời hạn xem trước", "Preview age limit", f"{max_age_hours:g} h"),
        ("Duyệt trước lúc", "Approve before", deadline),
        ("Lệnh duyệt", "Approve command", f"omi-batch approve {batch_info['id']} --report {name}"),
    ]  # fmt: skip


def _iso(moment: datetime) -> str:
    """A time as the ledger writes it (UTC, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
