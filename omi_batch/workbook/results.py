"""The results workbook: every row's outcome as people read it; nothing in it is editable."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omi_batch import reports
from omi_batch.workbook import frames, sheets
from omi_batch.workbook.texts import HEADER_NOTES, RESULTS_STEPS, STATUS_VI, steps

RESULTS_SHEET = "Results"


def write_results_workbook(
    rows: list[dict],
    batch_info: Mapping[str, Any],
    path: str | Path,
    *,
    head: str | None = None,
) -> Path:
    """Write ``<batch>-results.xlsx``: sheets Results (every row's outcome, the rows that did
    not succeed shaded), Targets (with ``moved``) and About. Nothing in it is editable."""
    frame = reports.results_frame(rows, head)
    statuses = list(frame["status"])
    book = sheets.Book()
    results = book.sheet(RESULTS_SHEET)

    def style(index: int, column: str) -> tuple[str | None, bool]:
        status = statuses[index]
        if status in ("failed", "preview_failed"):
            return sheets.FAILED_FILL, False
        return (sheets.UNCONFIRMED_FILL if status == "unconfirmed" else None), False

    sheets.table(results, frame, HEADER_NOTES, style=style)
    sheets.targets_sheet(book, rows, with_moved=True)
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    facts = [
        ("Mã lô", "Batch", batch_info["id"]),
        ("Tạo lúc", "Created at", batch_info.get("created_at") or ""),
        ("Tệp nguồn", "Source file", batch_info.get("source_file") or ""),
        ("Số dòng", "Rows", len(statuses)),
        *[(STATUS_VI[s], s, counts[s]) for s in reports.RESULT_STATUSES if counts.get(s)],
        ("Hội thoại đã chuyển", "Conversations moved", sum(frames.moved_by_target(rows).values())),
        *frames.tickets_fact(rows, "updated_records", ("Ticket đã chuyển", "Tickets moved")),
        ("Mã băm sổ ghi", "Ledger head", head or ""),
    ]
    title = ("Kết quả lô chuyển hội thoại", "Results of a conversation transfer batch")
    sheets.about_sheet(
        book, title=title, steps=steps(RESULTS_STEPS, batch=batch_info["id"]), facts=facts
    )
    return book.save(Path(path))
