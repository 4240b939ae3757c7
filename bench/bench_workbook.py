"""Workbook benchmark: how long the review and results workbooks of a 10,000-row batch take to
write, beside the CSV reports of the same rows. The rows are a real ledger's (a 10,000-row file
read by the intake, then a batch created), given the figures a preview and an execute would
give them. Local files only; bounded. ``OPENPYXL_LXML=False`` measures openpyxl without lxml.

Run: .venv/bin/python bench/bench_workbook.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omi_batch import reports, workbook  # noqa: E402
from omi_batch.ledger import Ledger  # noqa: E402
from omi_batch.roster import read_plan  # noqa: E402

ROWS = 10_000


def batch_rows(folder: Path) -> tuple[list[dict], dict]:
    lines = ["source_email,target_email,replace_existing_members,conv_ids,note"]
    for i in range(ROWS):
        ids = f"6a92a56ca95c2c0b0746{i:04x}" if i % 3 == 0 else ""
        lines.append(f"nv{i}@example.vn,nhan{i % 50}@example.vn,false,{ids},Nguyễn Văn An {i}")
    source = folder / "departures.csv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plan = read_plan(source)
    with Ledger(folder / "ledger.db") as ledger:
        batch_id = ledger.create_batch(
            source_file=str(source), source_sha256=plan.sha256, created_by="bench",
            base_url=None, options={}, input_rows=ROWS, warnings=plan.warnings,
            rows=plan.transfers,
        )  # fmt: skip
        rows, info = ledger.rows(batch_id), ledger.batch(batch_id)
    for n, row in enumerate(rows):
        failed = n % 100 == 0
        row.update(
            state="preview_failed" if failed else "succeeded",
            conversations_previewed=None if failed else 19,
            preview_error="OMI answered 200 user_not_found: no agent" if failed else None,
            previewed_at="2026-12-01T21:40:03.212Z",
            updated_records=None if failed else 19,
        )
    return rows, info


def timed(what: str, work) -> float:
    started = time.perf_counter()
    work()
    wall = time.perf_counter() - started
    print(f"{what}, {ROWS:,} rows: {wall:.2f} s")
    return wall


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows, info = batch_rows(folder)
        batch_id = info["id"]
        csv = timed("CSV preview + targets reports",
                    lambda: reports.write_preview_reports(rows, batch_id, folder))  # fmt: skip
        review = timed("review workbook (Review, Targets, About)",
                       lambda: workbook.write_review_workbook(
                           rows, info, workbook.review_path(folder, batch_id)))  # fmt: skip
        timed("results workbook (Results, Targets, About)",
              lambda: workbook.write_results_workbook(
                  rows, info, workbook.results_path(folder, batch_id)))  # fmt: skip
        size = workbook.review_path(folder, batch_id).stat().st_size
        print(f"review workbook: {size / 1e6:.1f} MB, {review / csv:.1f}x the CSV reports' time")
        from openpyxl.xml import LXML

        print(f"openpyxl writes its XML through lxml: {'yes' if LXML else 'no'}")


if __name__ == "__main__":
    main()
